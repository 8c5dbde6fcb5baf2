//! Two futures run by one task, each with a waker of its own.
//!
//! A client connection's task runs hyper's server connection and, beside
//! it, the upstream connections its requests go out on. They hand each
//! other work: a request to the upstream connection, its answer back. With
//! one waker for both, each hand-over wakes the task while it is being
//! polled, and the task goes once more through the scheduler (which may
//! also wake another worker thread to steal it) to poll both again. Here a
//! wake-up given while the task is being polled only marks the future it
//! is for, and the task polls that one again at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls of the two futures within one poll of the task, at most; then the
/// task yields, so that others get their turn.
const ROUNDS: usize = 8;

/// `main` and `beside`, polled together until `main` is done (`beside`
/// never finishes).
pub struct Together<M, B> {
    main: Pin<Box<M>>,
    beside: Pin<Box<B>>,
    shared: Arc<Shared>,
    main_child: Arc<Child>,
    main_waker: Waker,
    beside_child: Arc<Child>,
    beside_waker: Waker,
    /// Both are polled on the first poll; after it, only those woken.
    started: bool,
}

struct Shared {
    /// The task's waker, as of its last poll.
    task: AtomicWaker,
    /// The task is polling the futures: a wake-up is seen by its loop.
    polling: AtomicBool,
}

/// The waker one of the two futures is given.
struct Child {
    shared: Arc<Shared>,
    woken: AtomicBool,
}

impl Wake for Child {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // While the task polls, its loop sees the mark before it returns
        // (it reads the marks after it stops polling); otherwise the task
        // is woken.
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.task.wake();
        }
    }
}

/// Runs `main` with `beside` in the same task; see the module.
pub fn together<M, B>(main: M, beside: B) -> Together<M, B>
where
    M: Future,
    B: Future<Output = std::convert::Infallible>,
{
    let shared = Arc::new(Shared {
        task: AtomicWaker::new(),
        polling: AtomicBool::new(false),
    });
    let child = || {
        Arc::new(Child {
            shared: shared.clone(),
            woken: AtomicBool::new(false),
        })
    };
    let (main_child, beside_child) = (child(), child());
    Together {
        main: Box::pin(main),
        beside: Box::pin(beside),
        main_waker: Waker::from(main_child.clone()),
        main_child,
        beside_waker: Waker::from(beside_child.clone()),
        beside_child,
        shared,
        started: false,
    }
}

impl<M, B> Future for Together<M, B>
where
    M: Future,
    B: Future<Output = std::convert::Infallible>,
{
    type Output = M::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Output> {
        let this = &mut *self;
        this.shared.task.register(cx.waker());
        this.shared.polling.store(true, Ordering::SeqCst);
        let mut all = !std::mem::replace(&mut this.started, true);
        for _ in 0..ROUNDS {
            // `beside` first: what it finishes, `main` can use in the same
            // round.
            if this.beside_child.woken.swap(false, Ordering::SeqCst) || all {
                let mut cx = Context::from_waker(&this.beside_waker);
                if let Poll::Ready(never) = this.beside.as_mut().poll(&mut cx) {
                    match never {}
                }
            }
            if this.main_child.woken.swap(false, Ordering::SeqCst) || all {
                let mut cx = Context::from_waker(&this.main_waker);
                if let Poll::Ready(out) = this.main.as_mut().poll(&mut cx) {
                    this.shared.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(out);
                }
            }
            all = false;
            if !this.any_woken() {
                this.shared.polling.store(false, Ordering::SeqCst);
                // A wake-up between the reads above and the store saw the
                // task polling and left it to this loop.
                if !this.any_woken() {
                    return Poll::Pending;
                }
                this.shared.polling.store(true, Ordering::SeqCst);
            }
        }
        this.shared.polling.store(false, Ordering::SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<M, B> Together<M, B> {
    fn any_woken(&self) -> bool {
        self.beside_child.woken.load(Ordering::SeqCst)
            || self.main_child.woken.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task waker that counts its wake-ups and signals each on a channel.
    struct Counting {
        wakes: AtomicUsize,
        signal: Mutex<std::sync::mpsc::Sender<()>>,
    }

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            let _ = self.signal.lock().unwrap().send(());
        }
    }

    impl Counting {
        fn wakes(&self) -> usize {
            self.wakes.load(Ordering::SeqCst)
        }
    }

    /// A task waker, and the channel its wake-ups are signalled on.
    fn task_waker() -> (Arc<Counting>, Waker, std::sync::mpsc::Receiver<()>) {
        let (signal, woken) = std::sync::mpsc::channel();
        let counting = Arc::new(Counting {
            wakes: AtomicUsize::new(0),
            signal: Mutex::new(signal),
        });
        (counting.clone(), Waker::from(counting), woken)
    }

    /// A future that is never ready and counts its polls; one that
    /// `wakes_itself` wakes its waker on every poll.
    fn never_ready<T>(wakes_itself: bool) -> (Arc<AtomicUsize>, impl Future<Output = T>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let future = std::future::poll_fn(move |cx| {
            counter.fetch_add(1, Ordering::SeqCst);
            if wakes_itself {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        });
        (polls, future)
    }

    /// `main` waits for `beside` to take a job and answer it, as a request
    /// handler waits for the upstream connection: one poll of the task does
    /// the whole exchange, and the task is not woken for it.
    #[test]
    fn a_hand_over_within_a_poll_is_polled_at_once_without_waking_the_task() {
        let (job_tx, mut job_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (answer_tx, mut answer_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let beside = async move {
            while let Some(job) = job_rx.recv().await {
                answer_tx.send(job * 2).unwrap();
            }
            std::future::pending().await
        };
        let main = async move {
            let mut sum = 0;
            for job in 1..=3 {
                job_tx.send(job).unwrap();
                sum += answer_rx.recv().await.unwrap();
            }
            sum
        };
        let mut both = std::pin::pin!(together(main, beside));
        let (counting, waker, _) = task_waker();
        let polled = both.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(12));
        assert_eq!(counting.wakes(), 0);
    }

    /// A wake-up from outside, while the task is not polling, wakes it;
    /// only the future it is for is polled.
    #[test]
    fn a_wake_up_from_outside_wakes_the_task_and_polls_only_its_future() {
        let (beside_polls, beside) = never_ready::<std::convert::Infallible>(false);
        let (tx, rx) = tokio::sync::oneshot::channel::<&str>();
        let mut both = std::pin::pin!(together(rx, beside));
        let (counting, waker, _) = task_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(both.as_mut().poll(&mut cx).is_pending());
        assert_eq!(beside_polls.load(Ordering::SeqCst), 1);
        tx.send("answer").unwrap();
        assert_eq!(counting.wakes(), 1);
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready(Ok("answer")));
        assert_eq!(
            beside_polls.load(Ordering::SeqCst),
            1,
            "beside was not woken"
        );
    }

    /// A future that keeps waking itself gets a bounded number of polls,
    /// then the task yields (wakes itself) so that others get their turn.
    #[test]
    fn a_future_that_always_wakes_itself_does_not_hold_the_thread() {
        let (main_polls, main) = never_ready::<()>(true);
        let beside = std::future::pending::<std::convert::Infallible>();
        let mut both = std::pin::pin!(together(main, beside));
        let (counting, waker, _) = task_waker();
        assert!(
            both.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(main_polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(counting.wakes(), 1);
    }

    /// Wake-ups from another thread while the task polls are never lost:
    /// each is either seen by the poll loop or wakes the task.
    #[test]
    fn wake_ups_racing_with_the_end_of_a_poll_are_not_lost() {
        for _ in 0..200 {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
            let main = async move {
                let mut got = 0;
                while got < 50 {
                    rx.recv().await.unwrap();
                    got += 1;
                }
                got
            };
            let beside = std::future::pending::<std::convert::Infallible>();
            let mut both = std::pin::pin!(together(main, beside));
            let sender = std::thread::spawn(move || {
                for n in 0..50 {
                    tx.send(n).unwrap();
                    std::thread::yield_now();
                }
            });
            let (_, waker, woken) = task_waker();
            let mut cx = Context::from_waker(&waker);
            let got = loop {
                match both.as_mut().poll(&mut cx) {
                    Poll::Ready(got) => break got,
                    Poll::Pending => woken
                        .recv_timeout(std::time::Duration::from_secs(10))
                        .expect("a wake-up was lost"),
                }
            };
            assert_eq!(got, 50);
            sender.join().unwrap();
        }
    }
}
