//! What one forwarded request did, gathered while it is handled: the
//! account that served it and how long the upstream took to answer. The
//! handler reads it once the answer's head is ready, for the metrics.

use std::cell::RefCell;
use std::time::Duration;

tokio::task_local! {
    static TRACE: RefCell<Trace>;
}

/// What a request did upstream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Trace {
    /// The account whose credentials the last attempt carried.
    pub account: Option<String>,
    /// The last attempt's time to its answer head.
    pub upstream: Option<Duration>,
}

/// Runs `handling`, gathering its trace.
pub async fn traced<T>(handling: impl Future<Output = T>) -> (T, Trace) {
    TRACE
        .scope(RefCell::new(Trace::default()), async {
            let answer = handling.await;
            (answer, TRACE.with(|t| t.take()))
        })
        .await
}

/// The request goes upstream with `account`'s credentials.
pub fn routed(account: &str) {
    let _ = TRACE.try_with(|t| t.borrow_mut().account = Some(account.to_owned()));
}

/// The upstream's answer head came after `waited`.
pub fn answered_after(waited: Duration) {
    let _ = TRACE.try_with(|t| t.borrow_mut().upstream = Some(waited));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_attempt_is_what_the_trace_holds() {
        let ((), trace) = traced(async {
            routed("acc-1");
            answered_after(Duration::from_millis(5));
            tokio::task::yield_now().await;
            routed("acc-2");
            answered_after(Duration::from_millis(7));
        })
        .await;
        let expected = Trace {
            account: Some("acc-2".into()),
            upstream: Some(Duration::from_millis(7)),
        };
        assert_eq!(trace, expected);
    }

    #[tokio::test]
    async fn outside_a_traced_request_nothing_is_gathered_and_nothing_fails() {
        routed("acc-1");
        answered_after(Duration::from_millis(5));
        let ((), trace) = traced(async {}).await;
        assert_eq!(trace, Trace::default());
    }
}
