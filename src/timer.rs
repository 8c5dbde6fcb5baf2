//! Timeouts on every request without a timer made, registered and dropped
//! for each: a pool of spare tokio timers, reused.
//!
//! A new timer costs an allocation and two timer-wheel updates, and when
//! its deadline is earlier than the one the runtime last went to sleep with
//! (as a request's head timeout is, while nothing else is pending), the
//! runtime's driver is woken through its eventfd: a write and one more
//! turn of epoll for every request. A spare stays registered at its old
//! deadline; moving it later for its next use is one atomic update, and
//! the driver's wake-up time stays at or before it.
//!
//! A pool belongs to the runtime its timers are made in: each server and
//! client keeps its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Spares kept at most; more timers in use at once are made and dropped.
const SPARES_MAX: usize = 256;

type Spares = Arc<Mutex<Vec<Spare>>>;

/// A timer not in use, and the runtime it belongs to.
struct Spare {
    runtime: Id,
    sleep: Pin<Box<Sleep>>,
}

/// A pool of spare timers; clones share it.
#[derive(Clone, Default)]
pub struct Timers {
    spares: Spares,
}

impl Timers {
    /// A timer that fires at `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Timer {
        let spare = self.spares.lock().expect("timer spares lock").pop();
        let Spare { runtime, sleep } = match spare {
            Some(mut spare) => {
                spare.sleep.as_mut().reset(deadline);
                spare
            }
            None => Spare {
                runtime: Handle::current().id(),
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
            },
        };
        Timer {
            sleep: Some(sleep),
            runtime,
            spares: self.spares.clone(),
        }
    }

    /// A timer that fires after `duration`.
    pub fn sleep(&self, duration: Duration) -> Timer {
        self.sleep_until(Instant::now() + duration)
    }
}

/// A timer from a [`Timers`] pool, returned to it when dropped.
pub struct Timer {
    /// Always `Some` until the timer is dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    runtime: Id,
    spares: Spares,
}

impl Timer {
    /// Fires at `deadline` instead; a later one costs no timer-wheel update.
    pub fn reset(&mut self, deadline: Instant) {
        self.sleep().reset(deadline);
    }

    fn sleep(&mut self) -> Pin<&mut Sleep> {
        self.sleep
            .as_mut()
            .expect("a timer holds its sleep until dropped")
            .as_mut()
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep().poll(cx)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some(mut sleep) = self.sleep.take() else {
            return;
        };
        // The timer keeps the waker of the task that polled it last, and
        // with it that task's memory: a spare gets a waker that holds
        // nothing. Polling needs the timer's runtime still running, which
        // it is while it drops its tasks; a timer dropped anywhere else
        // (outside it, or in another runtime) is not kept.
        if !Handle::try_current().is_ok_and(|current| current.id() == self.runtime) {
            return;
        }
        let mut noop = Context::from_waker(Waker::noop());
        let _ = std::pin::pin!(tokio::task::coop::unconstrained(sleep.as_mut())).poll(&mut noop);
        let mut spares = match self.spares.lock() {
            Ok(spares) => spares,
            Err(_) => return,
        };
        if spares.len() < SPARES_MAX {
            spares.push(Spare {
                runtime: self.runtime,
                sleep,
            });
        }
    }
}

impl hyper::rt::Sleep for Timer {}

impl hyper::rt::Timer for Timers {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Timers::sleep(self, duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Timers::sleep_until(self, deadline.into()))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Timer>() {
            Some(mut timer) => timer.reset(deadline.into()),
            None => *sleep = hyper::rt::Timer::sleep_until(self, deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_spare_fires_at_its_new_deadline_not_its_old_one() {
        let timers = Timers::default();
        let start = Instant::now();
        drop(timers.sleep(Duration::from_secs(5)));
        assert_eq!(timers.spares.lock().unwrap().len(), 1);
        let reused = timers.sleep(Duration::from_secs(30));
        assert!(timers.spares.lock().unwrap().is_empty());
        reused.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_moved_earlier_fires_then() {
        let timers = Timers::default();
        let start = Instant::now();
        let mut timer = timers.sleep(Duration::from_secs(300));
        timer.reset(start + Duration::from_secs(2));
        timer.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        // Elapsed and dropped, it is a spare that works again.
        let again = timers.sleep(Duration::from_secs(7));
        again.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(9));
    }

    struct Counted;

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_spare_keeps_no_waker_of_the_task_that_used_it() {
        let timers = Timers::default();
        let waker_of_task = Arc::new(Counted);
        let mut timer = timers.sleep(Duration::from_secs(60));
        let waker = Waker::from(waker_of_task.clone());
        assert!(
            Pin::new(&mut timer)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(waker);
        assert_eq!(Arc::strong_count(&waker_of_task), 2, "the timer holds it");
        drop(timer);
        assert_eq!(timers.spares.lock().unwrap().len(), 1);
        assert_eq!(Arc::strong_count(&waker_of_task), 1);
    }

    #[test]
    fn a_timer_dropped_outside_a_runtime_is_not_kept() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let timers = Timers::default();
        let timer = {
            let _inside = runtime.enter();
            timers.sleep(Duration::from_secs(1))
        };
        drop(runtime);
        drop(timer);
        assert!(timers.spares.lock().unwrap().is_empty());
    }

    #[test]
    fn a_timer_dropped_in_another_runtime_is_not_kept() {
        let runtime = |_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let (first, second) = (runtime(1), runtime(2));
        let timers = Timers::default();
        let timer = {
            let _inside = first.enter();
            timers.sleep(Duration::from_secs(1))
        };
        drop(first);
        second.block_on(async move { drop(timer) });
        assert!(timers.spares.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_spare_limit_is_kept() {
        let timers = Timers::default();
        let many: Vec<Timer> = (0..SPARES_MAX + 10)
            .map(|_| timers.sleep(Duration::from_secs(1)))
            .collect();
        drop(many);
        assert_eq!(timers.spares.lock().unwrap().len(), SPARES_MAX);
    }
}
