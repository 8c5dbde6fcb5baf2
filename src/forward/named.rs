//! Requests for one named account: `/accounts/{id}/...` is served as
//! `/...` with `{id}`'s credentials, and no other account's (a 429 of that
//! account is the answer), for a client that must use one account
//! (`codex-broker run --account ID`). The name travels with the request's
//! task, read where the account is routed.

use hyper::Uri;

tokio::task_local! {
    static NAMED: Option<Box<str>>;
}

/// The longest account name taken from a path.
const MAX_NAME: usize = 128;

/// The account `path` names and the path it is served as, when it is
/// under `/accounts/{id}/`.
pub fn split(uri: &Uri) -> Option<(Box<str>, Uri)> {
    let rest = uri.path().strip_prefix("/accounts/")?;
    let (name, path) = rest.split_at(rest.find('/')?);
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.@".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        return None;
    }
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    Some((name.into(), target.parse().ok()?))
}

/// Runs `handling` for the account `name` (none: routed as usual).
pub async fn scoped<T>(name: Option<Box<str>>, handling: impl Future<Output = T>) -> T {
    NAMED.scope(name, handling).await
}

/// The account the request being handled is for, if it names one.
pub fn account() -> Option<Box<str>> {
    NAMED.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(target: &str) -> Option<(String, String)> {
        split(&target.parse().unwrap()).map(|(n, u)| (n.into(), u.to_string()))
    }

    #[test]
    fn a_named_path_is_split_and_others_are_left() {
        assert_eq!(
            of("/accounts/work/v1/chat/completions?x=1"),
            Some(("work".into(), "/v1/chat/completions?x=1".into()))
        );
        assert_eq!(
            of("/accounts/acc-1.a@b/codex/responses").unwrap().1,
            "/codex/responses"
        );
        for left in [
            "/v1/models",
            "/accounts/",
            "/accounts/work",
            "/accounts//v1",
            "/accounts/a%2Fb/v1",
        ] {
            assert_eq!(of(left), None, "{left}");
        }
        let long = format!("/accounts/{}/v1", "a".repeat(MAX_NAME + 1));
        assert_eq!(of(&long), None);
    }

    #[tokio::test]
    async fn the_name_is_seen_inside_its_scope_only() {
        assert_eq!(account(), None);
        let inside = scoped(Some("work".into()), async { account() }).await;
        assert_eq!(inside.as_deref(), Some("work"));
        assert_eq!(scoped(None, async { account() }).await, None);
    }
}
