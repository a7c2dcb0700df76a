//! Tests of the async shell: permits, FIFO hand-over, timeouts, hang-ups,
//! the capacity signal, and churn that must never leak a slot. Time is
//! tokio's paused clock; futures are polled by hand where order matters.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::QueuePolicy;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Instances `1..=n` capped at `cap`, queue `depth` deep, timeout in seconds.
fn admission(n: u64, cap: u32, depth: usize, timeout: u64) -> Admission {
    let a = Admission::new(
        QueuePolicy {
            max_depth: depth,
            timeout: secs(timeout),
            ..QueuePolicy::default()
        },
        cap,
    );
    for i in 1..=n {
        a.add_instance(InstanceId(i), format!("w{i}.sock"));
    }
    a
}

/// Polls once without a waker: registers the waiter, runs no other task.
fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

fn ready<T>(p: Poll<Result<T, Rejection>>) -> Result<T, Rejection> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("expected the future to be ready"),
    }
}

#[tokio::test]
async fn permits_go_to_the_least_loaded_and_release_on_drop() {
    let a = admission(2, 2, 10, 30);
    let p1 = a.acquire(secs(5)).await.expect("free slot");
    let p2 = a.acquire(secs(5)).await.expect("free slot");
    assert_eq!(
        (p1.instance(), p2.instance()),
        (InstanceId(1), InstanceId(2))
    );
    assert_eq!(p1.address(), "w1.sock");
    assert_eq!(p1.waited(), Duration::ZERO);
    let st = a.stats();
    assert_eq!(st.in_flight, 2);
    assert!(st.instances.iter().all(|i| i.in_flight == 1));
    drop(p1);
    drop(p2);
    let st = a.stats();
    assert_eq!((st.in_flight, st.observed_concurrency), (0, 0));
    assert!(st.service_time.is_some(), "holds are measured");
}

#[tokio::test(start_paused = true)]
async fn queued_waiters_get_released_slots_in_fifo_order() {
    let a = admission(1, 1, 10, 30);
    let held = a.acquire(secs(5)).await.expect("free slot");
    let mut w1 = pin!(a.acquire(secs(10)));
    let mut w2 = pin!(a.acquire(secs(10)));
    assert!(poll_once(w1.as_mut()).is_pending());
    assert!(poll_once(w2.as_mut()).is_pending());
    assert_eq!(a.stats().queue_depth, 2);
    tokio::time::advance(secs(3)).await;
    drop(held);
    assert!(poll_once(w2.as_mut()).is_pending(), "second in line waits");
    let p1 = ready(poll_once(w1.as_mut())).expect("first in line");
    assert_eq!(p1.waited(), secs(3));
    assert_eq!(a.stats().service_time, Some(secs(3)));
    drop(p1);
    let p2 = ready(poll_once(w2.as_mut())).expect("then the second");
    assert_eq!(p2.instance(), InstanceId(1));
    assert_eq!(a.stats().queue_depth, 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_times_out_at_its_deadline() {
    let a = admission(0, 1, 10, 30);
    let start = Instant::now();
    let r = a.acquire(secs(2)).await;
    assert!(matches!(r, Err(Rejection::Timeout)), "{r:?}");
    assert_eq!(start.elapsed(), secs(2));
    let st = a.stats();
    assert_eq!((st.queue_depth, st.shed.timeout), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn the_queue_timeout_caps_a_longer_deadline() {
    let a = admission(0, 1, 10, 1);
    let start = Instant::now();
    let r = a.acquire(secs(60)).await;
    assert!(matches!(r, Err(Rejection::Timeout)), "{r:?}");
    assert_eq!(start.elapsed(), secs(1));
}

#[tokio::test(start_paused = true)]
async fn sheds_on_the_measured_wait_but_not_at_zero_instances() {
    let a = admission(1, 1, 10, 30);
    let p = a.acquire(secs(5)).await.expect("free slot");
    tokio::time::advance(secs(10)).await;
    drop(p);
    let _held = a.acquire(secs(5)).await.expect("free slot");
    let r = a.acquire(secs(1)).await;
    let want = Rejection::WouldMissDeadline {
        retry_after: secs(10),
    };
    assert_eq!(r.err(), Some(want));
    a.remove_instance(InstanceId(1));
    let mut cold = pin!(a.acquire(secs(1)));
    assert!(poll_once(cold.as_mut()).is_pending(), "queued at zero");
    assert_eq!(a.stats().shed.would_miss_deadline, 1);
}

#[tokio::test]
async fn a_request_queued_at_zero_raises_wants_capacity() {
    let a = admission(0, 2, 10, 30);
    let mut wants = a.wants_capacity();
    assert!(!*wants.borrow_and_update());
    let mut w = pin!(a.acquire(secs(10)));
    assert!(poll_once(w.as_mut()).is_pending());
    assert!(wants.has_changed().expect("sender alive"));
    assert!(*wants.borrow_and_update());
    a.add_instance(InstanceId(7), "w7.sock");
    assert!(!*wants.borrow_and_update(), "drained into the new instance");
    let p = ready(poll_once(w.as_mut())).expect("slot on the new instance");
    assert_eq!(p.instance(), InstanceId(7));
}

#[tokio::test]
async fn a_burst_at_zero_queues_and_drains_in_order_on_add() {
    let a = admission(0, 50, 1000, 30);
    let mut waiters: Vec<_> = (0..200).map(|_| Box::pin(a.acquire(secs(30)))).collect();
    for w in &mut waiters {
        assert!(poll_once(w.as_mut()).is_pending());
    }
    assert_eq!(a.stats().queue_depth, 200);
    a.add_instance(InstanceId(1), "w1.sock");
    // Keep the permits: dropping one would pass its slot down the line.
    let polled: Vec<_> = waiters.iter_mut().map(|w| poll_once(w.as_mut())).collect();
    let served: Vec<bool> = polled.iter().map(|p| p.is_ready()).collect();
    assert!(served[..50].iter().all(|&s| s), "the first 50 in line");
    assert!(served[50..].iter().all(|&s| !s));
    assert_eq!(a.stats().in_flight, 50);
    assert_eq!(a.stats().shed, ShedCounts::default());
}

#[tokio::test]
async fn a_hung_up_waiter_leaves_at_once_and_gets_nothing() {
    let a = admission(1, 1, 10, 30);
    let held = a.acquire(secs(5)).await.expect("free slot");
    {
        let mut w = pin!(a.acquire(secs(10)));
        assert!(poll_once(w.as_mut()).is_pending());
        assert_eq!(a.stats().queue_depth, 1);
    }
    let st = a.stats();
    assert_eq!((st.queue_depth, st.shed.cancelled), (0, 1));
    drop(held);
    assert_eq!(a.stats().in_flight, 0, "no slot went to the gone waiter");
}

#[tokio::test]
async fn a_slot_handed_to_a_waiter_that_hangs_up_goes_to_the_next() {
    let a = admission(1, 1, 10, 30);
    let held = a.acquire(secs(5)).await.expect("free slot");
    let mut w2 = pin!(a.acquire(secs(10)));
    {
        let mut w1 = pin!(a.acquire(secs(10)));
        assert!(poll_once(w1.as_mut()).is_pending());
        assert!(poll_once(w2.as_mut()).is_pending());
        drop(held); // the slot is handed to w1, which never looks at it
        assert_eq!(a.stats().queue_depth, 1);
    }
    let p2 = ready(poll_once(w2.as_mut())).expect("w1's slot passed on");
    let st = a.stats();
    assert_eq!((st.in_flight, st.queue_depth), (1, 0));
    assert_eq!(st.shed.cancelled, 0, "w1 had left the queue already");
    drop(p2);
    assert_eq!(a.stats().in_flight, 0);
}

#[tokio::test]
async fn removed_instances_keep_their_permits_and_get_no_new_ones() {
    let a = admission(2, 1, 10, 30);
    let on_one = a.acquire(secs(5)).await.expect("free slot");
    assert_eq!(on_one.instance(), InstanceId(1));
    assert!(a.remove_instance(InstanceId(1)));
    let on_two = a.acquire(secs(5)).await.expect("instance 2");
    assert_eq!(on_two.instance(), InstanceId(2));
    let mut w = pin!(a.acquire(secs(5)));
    assert!(poll_once(w.as_mut()).is_pending());
    drop(on_one);
    assert!(
        poll_once(w.as_mut()).is_pending(),
        "no slot from a removed one"
    );
    assert!(a.stats().instances.iter().all(|i| i.id != InstanceId(1)));
    drop(on_two);
    let p = ready(poll_once(w.as_mut())).expect("instance 2 again");
    assert_eq!(p.instance(), InstanceId(2));
}

#[tokio::test]
async fn a_reload_with_a_higher_cap_drains_the_queue() {
    let a = admission(1, 1, 10, 30);
    let _held = a.acquire(secs(5)).await.expect("free slot");
    let mut w = pin!(a.acquire(secs(5)));
    assert!(poll_once(w.as_mut()).is_pending());
    a.set_policy(QueuePolicy::default(), 2);
    assert!(ready(poll_once(w.as_mut())).is_ok());
}

#[tokio::test]
async fn close_turns_away_the_queued_and_the_new() {
    let a = admission(1, 1, 10, 30);
    let held = a.acquire(secs(5)).await.expect("free slot");
    let mut w = pin!(a.acquire(secs(5)));
    assert!(poll_once(w.as_mut()).is_pending());
    a.close();
    assert_eq!(ready(poll_once(w.as_mut())).err(), Some(Rejection::Closed));
    assert_eq!(a.acquire(secs(5)).await.err(), Some(Rejection::Closed));
    drop(held);
    assert_eq!(a.stats().in_flight, 0);
}

#[tokio::test]
async fn retire_refuses_the_new_but_serves_the_queued_and_reopen_admits_again() {
    let a = admission(1, 1, 10, 30);
    let mut activity = a.activity();
    assert_eq!(
        *activity.borrow_and_update(),
        Activity {
            ready: 1,
            queue_empty: true
        }
    );
    let held = a.acquire(secs(5)).await.expect("free slot");
    let mut w = pin!(a.acquire(secs(5)));
    assert!(poll_once(w.as_mut()).is_pending());
    assert!(activity.has_changed().expect("sender alive"));
    assert!(!activity.borrow_and_update().queue_empty);
    a.retire();
    assert!(a.is_closed());
    assert_eq!(a.acquire(secs(5)).await.err(), Some(Rejection::Closed));
    assert!(a.try_acquire().is_none());
    drop(held);
    let served = ready(poll_once(w.as_mut())).expect("the queued one is served");
    assert!(activity.borrow_and_update().queue_empty);
    drop(served);
    a.reopen();
    assert!(!a.is_closed());
    assert!(a.acquire(secs(5)).await.is_ok());
}

/// Counts permits per instance as the tasks see them; the guard undoes its
/// count even when its task is aborted.
struct Live {
    counts: Arc<[AtomicU32; 8]>,
    index: usize,
}

impl Live {
    fn enter(counts: &Arc<[AtomicU32; 8]>, p: &Permit, cap: u32) -> Self {
        let index = usize::try_from(p.instance().0).expect("small ids");
        let n = counts[index].fetch_add(1, Ordering::SeqCst) + 1;
        assert!(n <= cap, "instance {index} holds {n} > {cap}");
        Live {
            counts: counts.clone(),
            index,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.counts[self.index].fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_never_leaks_under_concurrent_churn() {
    let cap = 2;
    let a = admission(3, cap, 10_000, 600);
    let counts: Arc<[AtomicU32; 8]> = Arc::new(Default::default());
    let tasks: Vec<_> = (0..400u32)
        .map(|i| {
            let (a, counts) = (a.clone(), counts.clone());
            tokio::spawn(async move {
                let p = a.acquire(secs(600)).await?;
                let _live = Live::enter(&counts, &p, cap);
                for _ in 0..(i % 5) {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Rejection>(())
            })
        })
        .collect();
    for (i, t) in tasks.iter().enumerate() {
        if i % 7 == 0 {
            t.abort();
        }
        if i == 100 {
            a.remove_instance(InstanceId(2));
            a.add_instance(InstanceId(4), "w4.sock");
        }
    }
    let (mut served, mut aborted) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(())) => served += 1,
            Ok(Err(r)) => panic!("rejected: {r}"),
            Err(e) if e.is_cancelled() => aborted += 1,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    assert_eq!(served + aborted, 400);
    assert!(served >= 400 - 58, "only aborted tasks go unserved");
    let st = a.stats();
    assert_eq!((st.in_flight, st.queue_depth), (0, 0));
    assert!(st.instances.iter().all(|i| i.in_flight == 0 && i.ready));
    let ids: Vec<u64> = st.instances.iter().map(|i| i.id.0).collect();
    assert_eq!(ids, [1, 3, 4]);
    assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 0));
}

/// How one simulated client ended.
#[derive(Debug, Default)]
struct Tally {
    served: u64,
    queue_full: u64,
    would_miss: u64,
    timeout: u64,
    hung_up: u64,
}

#[tokio::test(start_paused = true)]
async fn every_request_is_accounted_for_under_timeouts_and_hang_ups() {
    let cap = 3;
    let a = admission(2, cap, 40, 5);
    let counts: Arc<[AtomicU32; 8]> = Arc::new(Default::default());
    let clients: Vec<_> = (0..300u64)
        .map(|i| {
            let (a, counts) = (a.clone(), counts.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * i)).await;
                let deadline = secs(i % 7 + 1);
                let patience = Duration::from_millis(if i % 11 == 0 { 700 } else { 60_000 });
                let p = match tokio::time::timeout(patience, a.acquire(deadline)).await {
                    Err(_hung_up) => return Err(None),
                    Ok(r) => r.map_err(Some)?,
                };
                let _live = Live::enter(&counts, &p, cap);
                tokio::time::sleep(Duration::from_millis(400 * (i % 4))).await;
                Ok(())
            })
        })
        .collect();
    let churn = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(2)).await;
            a.remove_instance(InstanceId(1));
            tokio::time::sleep(secs(2)).await;
            a.add_instance(InstanceId(3), "w3.sock");
        })
    };
    let mut tally = Tally::default();
    for c in clients {
        match c.await.expect("client task") {
            Ok(()) => tally.served += 1,
            Err(None) => tally.hung_up += 1,
            Err(Some(Rejection::QueueFull { retry_after })) => {
                assert!(retry_after >= secs(1) && retry_after <= secs(5));
                tally.queue_full += 1;
            }
            Err(Some(Rejection::WouldMissDeadline { retry_after })) => {
                assert!(retry_after >= secs(1) && retry_after <= secs(5));
                tally.would_miss += 1;
            }
            Err(Some(Rejection::Timeout)) => tally.timeout += 1,
            Err(Some(Rejection::Closed)) => panic!("never closed"),
        }
    }
    churn.await.expect("churn task");
    let st = a.stats();
    assert_eq!((st.in_flight, st.queue_depth), (0, 0), "{tally:?}");
    assert_eq!(
        tally.served + tally.queue_full + tally.would_miss + tally.timeout + tally.hung_up,
        300
    );
    assert_eq!(st.shed.queue_full, tally.queue_full);
    assert_eq!(st.shed.would_miss_deadline, tally.would_miss);
    assert_eq!(st.shed.timeout, tally.timeout);
    assert!(st.shed.cancelled <= tally.hung_up);
    assert!(tally.served > 0 && tally.hung_up > 0, "{tally:?}");
    assert!(
        tally.queue_full + tally.would_miss + tally.timeout > 0,
        "{tally:?}"
    );
}
