//! Tests of the pure admission state: routing, FIFO order, shedding rules,
//! Retry-After, instance changes and reloads. Waiters are plain tags.

use std::time::Duration;

use super::*;
use crate::config::QueuePolicy;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn policy(max_depth: usize, timeout_s: u64) -> QueuePolicy {
    QueuePolicy {
        max_depth,
        timeout: Duration::from_secs(timeout_s),
        ..QueuePolicy::default()
    }
}

/// A state with instances `1..=n`, each capped at `cap`, timeout 30s.
fn state(n: u64, cap: u32, depth: usize) -> State<u32> {
    let mut s = State::new(policy(depth, 30), cap);
    for i in 1..=n {
        assert!(s
            .add_instance(InstanceId(i), &format!("w{i}.sock"))
            .is_empty());
    }
    s
}

fn granted(a: Admit) -> Slot {
    match a {
        Admit::Granted(slot) => slot,
        other => panic!("expected a slot, got {other:?}"),
    }
}

fn queued(a: Admit) -> WaiterId {
    match a {
        Admit::Queued { id, .. } => id,
        other => panic!("expected to queue, got {other:?}"),
    }
}

fn rejected(a: Admit) -> Rejection {
    match a {
        Admit::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// `(waiter tag, instance)` of each grant, in order.
fn tags(grants: Vec<Grant<u32>>) -> Vec<(u32, u64)> {
    grants
        .into_iter()
        .map(|g| (g.waiter, g.slot.instance.0))
        .collect()
}

/// Measures a service time of `hold` with one admit and release.
fn measure(s: &mut State<u32>, hold: Duration) {
    let slot = granted(s.admit(secs(60.0), 0));
    assert!(s.release(&slot, Some(hold)).is_empty());
}

/// Stats without the counters, to show that a shed changed nothing else.
fn load_of(s: &State<u32>) -> AdmissionStats {
    AdmissionStats {
        shed: ShedCounts::default(),
        ..s.stats()
    }
}

#[test]
fn routes_to_the_least_loaded_then_queues() {
    let mut s = state(2, 2, 10);
    let order: Vec<u64> = (0..4)
        .map(|_| granted(s.admit(secs(5.0), 0)).instance.0)
        .collect();
    assert_eq!(order, [1, 2, 1, 2]);
    queued(s.admit(secs(5.0), 7));
    let st = s.stats();
    assert_eq!(
        (st.in_flight, st.queue_depth, st.observed_concurrency),
        (4, 1, 5)
    );
    assert_eq!(st.capacity, 4);
    let on_two = Slot {
        instance: InstanceId(2),
        address: "w2.sock".into(),
    };
    assert_eq!(tags(s.release(&on_two, None)), [(7, 2)]);
}

#[test]
fn a_freed_slot_makes_its_instance_the_least_loaded() {
    let mut s = state(3, 4, 10);
    let slots: Vec<Slot> = (0..6).map(|_| granted(s.admit(secs(5.0), 0))).collect();
    assert!(s.release(&slots[4], None).is_empty());
    assert_eq!(slots[4].instance, InstanceId(2));
    assert_eq!(granted(s.admit(secs(5.0), 0)).instance, InstanceId(2));
}

#[test]
fn grants_follow_fifo_order() {
    let mut s = state(1, 1, 10);
    let mut slot = granted(s.admit(secs(5.0), 0));
    for tag in 1..=3 {
        queued(s.admit(secs(5.0), tag));
    }
    for tag in 1..=3 {
        let grants = s.release(&slot, None);
        assert_eq!(tags_ref(&grants), [(tag, 1)]);
        slot = grants
            .into_iter()
            .next()
            .map(|g| g.slot)
            .expect("one grant");
    }
    assert!(s.release(&slot, None).is_empty());
    assert_eq!(s.stats().in_flight, 0);
}

fn tags_ref(grants: &[Grant<u32>]) -> Vec<(u32, u64)> {
    grants
        .iter()
        .map(|g| (g.waiter, g.slot.instance.0))
        .collect()
}

#[test]
fn queue_full_sheds_with_retry_after_from_the_expected_wait() {
    // (measured hold, instances, cap, depth, Retry-After seconds)
    let rows: [(Option<f64>, u64, u32, usize, u64); 4] = [
        (None, 1, 1, 2, 30),        // no measurement: the queue timeout
        (Some(2.0), 1, 1, 2, 6),    // 2s × (2 ahead + 1) / 1 slot
        (Some(0.1), 2, 4, 3, 1),    // 0.05s rounds up to the 1s minimum
        (Some(100.0), 1, 1, 0, 30), // capped by the queue timeout
    ];
    for (hold, n, cap, depth, want) in rows {
        let mut s = state(n, cap, depth);
        if let Some(h) = hold {
            measure(&mut s, secs(h));
        }
        for _ in 0..(n as usize * cap as usize) {
            granted(s.admit(secs(60.0), 0));
        }
        for tag in 0..depth {
            queued(s.admit(secs(60.0), tag as u32));
        }
        let before = load_of(&s);
        let r = rejected(s.admit(secs(60.0), 99));
        assert_eq!(
            r,
            Rejection::QueueFull {
                retry_after: Duration::from_secs(want)
            },
            "{hold:?} {n}x{cap} depth {depth}"
        );
        assert_eq!(load_of(&s), before, "a shed touches nothing");
        assert_eq!(s.stats().shed.queue_full, 1);
    }
}

#[test]
fn sheds_when_the_expected_wait_exceeds_the_deadline() {
    // (queued ahead, deadline, queue timeout, shed with Retry-After?)
    let rows: [(u32, f64, u64, Option<u64>); 6] = [
        (0, 0.5, 30, Some(1)), // 1s wait > 0.5s
        (0, 1.0, 30, Some(1)), // 1s wait > 80 % of 1s: no headroom left
        (0, 1.25, 30, None),   // 1s = 80 % of 1.25s fits
        (2, 3.0, 30, Some(3)), // 3s wait > 2.4s
        (2, 3.75, 30, None),   // 3s wait fits 80 % of 3.75s
        (2, 60.0, 2, Some(2)), // the queue timeout caps deadline and Retry-After
    ];
    for (ahead, deadline, timeout, want) in rows {
        let mut s = state(1, 1, 100);
        measure(&mut s, secs(1.0));
        granted(s.admit(secs(60.0), 0));
        for tag in 0..ahead {
            queued(s.admit(secs(60.0), tag));
        }
        s.set_policy(policy(100, timeout), 1);
        let before = load_of(&s);
        let got = s.admit(secs(deadline), 99);
        match want {
            Some(retry) => {
                assert_eq!(
                    rejected(got),
                    Rejection::WouldMissDeadline {
                        retry_after: Duration::from_secs(retry)
                    },
                    "{ahead} ahead, deadline {deadline}s"
                );
                assert_eq!(load_of(&s), before, "a shed touches nothing");
                assert_eq!(s.stats().shed.would_miss_deadline, 1);
            }
            None => {
                queued(got);
            }
        }
    }
}

#[test]
fn never_sheds_on_a_guess_before_the_first_measurement() {
    let mut s = state(1, 1, 100);
    granted(s.admit(secs(5.0), 0));
    for tag in 0..50 {
        queued(s.admit(Duration::ZERO, tag));
    }
    assert_eq!(s.stats().shed, ShedCounts::default());
}

#[test]
fn a_burst_at_zero_instances_queues_and_drains_on_add() {
    let mut s = state(1, 4, 1000);
    measure(&mut s, secs(5.0));
    assert!(s.remove_instance(InstanceId(1)));
    for tag in 0..100 {
        let got = s.admit(Duration::from_millis(1), tag);
        assert!(matches!(got, Admit::Queued { .. }), "{tag}: {got:?}");
    }
    assert!(s.wants_capacity());
    let grants = s.add_instance(InstanceId(2), "w2.sock");
    assert_eq!(tags(grants), [(0, 2), (1, 2), (2, 2), (3, 2)]);
    assert!(!s.wants_capacity());
    assert_eq!(s.stats().queue_depth, 96);
}

#[test]
fn service_time_is_an_ewma_of_served_holds_only() {
    let mut s = state(1, 1, 10);
    let slot = granted(s.admit(secs(5.0), 0));
    s.release(&slot, None);
    assert_eq!(
        s.stats().service_time,
        None,
        "unserved slots measure nothing"
    );
    measure(&mut s, secs(1.0));
    measure(&mut s, secs(2.0));
    let mean = s.stats().service_time.expect("measured");
    assert!((mean.as_secs_f64() - 1.2).abs() < 1e-9, "{mean:?}");
}

#[test]
fn a_removed_instance_keeps_its_permits_but_gets_no_more() {
    let mut s = state(2, 1, 10);
    let on_one = granted(s.admit(secs(5.0), 0));
    assert_eq!(on_one.instance, InstanceId(1));
    assert!(s.remove_instance(InstanceId(1)));
    assert!(!s.remove_instance(InstanceId(1)), "already removed");
    assert_eq!(granted(s.admit(secs(5.0), 0)).instance, InstanceId(2));
    queued(s.admit(secs(5.0), 7));
    let st = s.stats();
    assert_eq!((st.ready_instances, st.in_flight, st.capacity), (1, 2, 1));
    assert!(st
        .instances
        .iter()
        .any(|i| i.id == InstanceId(1) && !i.ready));
    assert!(
        s.release(&on_one, None).is_empty(),
        "no grant on a removed one"
    );
    assert!(s.stats().instances.iter().all(|i| i.id != InstanceId(1)));
    assert_eq!(s.stats().queue_depth, 1);
}

#[test]
fn readding_a_draining_instance_revives_it() {
    let mut s = state(1, 2, 10);
    let slot = granted(s.admit(secs(5.0), 0));
    s.remove_instance(InstanceId(1));
    queued(s.admit(secs(5.0), 1));
    assert!(s.wants_capacity());
    assert_eq!(tags(s.add_instance(InstanceId(1), "w1b.sock")), [(1, 1)]);
    assert!(s.release(&slot, None).is_empty());
    assert_eq!(s.stats().in_flight, 1);
    assert_eq!(s.stats().instances[0].address, "w1b.sock");
}

#[test]
fn reload_raises_the_cap_and_shortens_the_queue() {
    let mut s = state(1, 1, 10);
    granted(s.admit(secs(5.0), 0));
    for tag in 1..=5 {
        queued(s.admit(secs(5.0), tag));
    }
    assert_eq!(tags(s.set_policy(policy(3, 30), 3)), [(1, 1), (2, 1)]);
    assert_eq!(s.stats().queue_depth, 3, "queued waiters stay");
    assert!(matches!(
        rejected(s.admit(secs(5.0), 9)),
        Rejection::QueueFull { .. }
    ));
}

#[test]
fn leaving_counts_once_and_only_from_the_queue() {
    let mut s = state(1, 1, 10);
    let slot = granted(s.admit(secs(5.0), 0));
    let a = queued(s.admit(secs(5.0), 1));
    let b = queued(s.admit(secs(5.0), 2));
    assert!(s.leave(a, Leave::TimedOut));
    assert!(!s.leave(a, Leave::TimedOut));
    assert_eq!(tags(s.release(&slot, None)), [(2, 1)]);
    assert!(!s.leave(b, Leave::HungUp), "granted, not queued");
    let shed = s.stats().shed;
    assert_eq!((shed.timeout, shed.cancelled), (1, 0));
}

#[test]
fn close_returns_the_waiters_and_refuses_more() {
    let mut s = state(1, 1, 10);
    granted(s.admit(secs(5.0), 0));
    for tag in 1..=3 {
        queued(s.admit(secs(5.0), tag));
    }
    assert_eq!(s.close(), [1, 2, 3]);
    assert_eq!(rejected(s.admit(secs(5.0), 4)), Rejection::Closed);
    assert!(!s.wants_capacity());
}

#[test]
fn retry_after_is_whole_seconds_within_bounds() {
    // (expected wait, queue timeout, Retry-After)
    for (wait, cap, want) in [
        (0.0, 30.0, 1),
        (0.2, 30.0, 1),
        (1.0, 30.0, 1),
        (1.1, 30.0, 2),
        (29.5, 30.0, 30),
        (100.0, 30.0, 30),
        (100.0, 0.5, 1),
    ] {
        assert_eq!(
            retry_after(secs(wait), secs(cap)),
            Duration::from_secs(want),
            "wait {wait}s, timeout {cap}s"
        );
    }
}

#[test]
fn expected_wait_table() {
    // (mean hold, ahead, capacity, wait)
    for (mean, ahead, capacity, want) in [
        (1.0, 0, 1, Some(1.0)),
        (1.0, 3, 2, Some(2.0)),
        (0.5, 9, 10, Some(0.5)),
        (1.0, 5, 0, None),
    ] {
        let got = expected_wait(secs(mean), ahead, capacity).map(|d| d.as_secs_f64());
        assert_eq!(got, want, "{mean}s, {ahead} ahead, {capacity} slots");
    }
}

#[test]
fn try_grant_takes_a_free_slot_only_when_nobody_waits() {
    let mut s = state(1, 1, 10);
    let slot = s.try_grant().expect("a free slot");
    assert!(s.try_grant().is_none(), "the only slot is taken");
    queued(s.admit(secs(5.0), 7));
    let grants = s.release(&slot, None);
    assert_eq!(tags(grants).len(), 1, "the freed slot goes to the waiter");
    assert!(s.try_grant().is_none(), "the waiter holds it now");
    s.close();
    assert!(s.try_grant().is_none(), "closed");
}
