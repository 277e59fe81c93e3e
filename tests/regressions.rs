//! Regressions found by the chaos test and reviews, at the library level.

use orchestrate::{ClaimOutcome, ClaimRequest, Clock, Coordination, NewTask, Status, Timestamp};
use std::sync::{Arc, Mutex};

/// A clock with sub-millisecond precision that moves only when told, like a
/// real clock read twice within one millisecond.
#[derive(Debug, Clone)]
struct NanoClock(Arc<Mutex<Timestamp>>);

impl Clock for NanoClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl NanoClock {
    fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap() = t;
    }
}

/// A heartbeat whose new lease ends in the same millisecond as the old one
/// used to remove the (identical) lease index line it had just added, so the
/// task stayed claimed forever after its holder died (found by
/// `tests/chaos.rs`).
#[test]
fn heartbeat_in_the_same_millisecond_keeps_the_lease_reapable() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Coordination::init(dir.path().join(".coordination"), None).unwrap();
    let t0 = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
        .unwrap()
        + chrono::TimeDelta::microseconds(100);
    let clock = NanoClock(Arc::new(Mutex::new(t0)));
    let c = c.with_clock(Arc::new(clock.clone()));
    c.create(NewTask {
        id: Some("t".into()),
        description: "t".into(),
        ..Default::default()
    })
    .unwrap();
    let ClaimOutcome::Claimed(t) = c
        .claim(&ClaimRequest {
            agent: "a".into(),
            lease_ms: Some(1_000),
            ..Default::default()
        })
        .unwrap()
    else {
        panic!("nothing claimed")
    };
    // 300 µs later, in the same millisecond: the new expiry has the same
    // millisecond as the old one, which was cut to milliseconds on disk.
    clock.set(t0 + chrono::TimeDelta::microseconds(300));
    c.heartbeat("t", t.fencing_token, Some(1_000)).unwrap();
    clock.set(t0 + chrono::TimeDelta::milliseconds(1_002));
    let reaped = c.reap().unwrap();
    assert_eq!(reaped.len(), 1, "the expired lease must be reaped");
    assert_eq!(c.get("t").unwrap().status, Status::Pending);
}

/// The system clock is cut to milliseconds, the precision of the files, so a
/// value in memory equals what a reader gets back.
#[test]
fn system_clock_has_millisecond_precision() {
    use orchestrate::Clock;
    let now = orchestrate::SystemClock.now();
    assert_eq!(now.timestamp_subsec_nanos() % 1_000_000, 0);
}
