//! The event loop: events aggregate by key, flush every interval, on a
//! checkpoint and at close; a failed flush loses nothing. Paused time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_runtime::{BoxError, EventLoop, keep_latest};

type Batches = Arc<Mutex<Vec<HashMap<u32, u64>>>>;

/// A loop flushing every second into `batches`, failing while `down`.
fn sink(batches: &Batches, down: &Arc<AtomicBool>) -> EventLoop<u32, u64> {
    let (batches, down) = (Arc::clone(batches), Arc::clone(down));
    EventLoop::spawn("test", Duration::from_secs(1), keep_latest, move |batch| {
        let (batches, down) = (Arc::clone(&batches), Arc::clone(&down));
        Box::pin(async move {
            if down.load(Ordering::SeqCst) {
                return Err::<(), BoxError>("the sink is down".into());
            }
            batches.lock().unwrap().push(batch);
            Ok(())
        })
    })
}

/// Lets the loop's task run until it waits again.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn events_are_aggregated_by_key_and_flushed_once_an_interval() {
    let batches = Batches::default();
    let l = sink(&batches, &Arc::default());
    settle().await; // the first tick, with nothing pending
    for i in 0..1_000u64 {
        l.record((i % 100) as u32, i);
    }
    assert_eq!(l.pending(), 100);
    assert!(
        batches.lock().unwrap().is_empty(),
        "flushed before its time"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    let got = batches.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one write for a thousand events");
    assert_eq!(got[0].len(), 100);
    assert_eq!(got[0][&7], 907, "the latest event of each key");
    assert_eq!(l.pending(), 0);
    assert!(l.last_flushed().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_its_events_and_newer_ones_win() {
    let batches = Batches::default();
    let down = Arc::new(AtomicBool::new(true));
    let l = sink(&batches, &down);
    settle().await;
    l.record(1, 10);
    l.record(2, 20);
    assert!(l.checkpoint().await.is_err());
    assert_eq!(l.pending(), 2, "a failed flush lost events");
    l.record(2, 21);
    down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    let got = batches.lock().unwrap().clone();
    assert_eq!(got, vec![HashMap::from([(1, 10), (2, 21)])]);
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_writes_at_once_and_close_writes_the_rest_then_stops() {
    let batches = Batches::default();
    let l = sink(&batches, &Arc::default());
    settle().await;
    l.record(1, 1);
    assert_eq!(l.checkpoint().await.unwrap(), 1);
    assert_eq!(batches.lock().unwrap().len(), 1);
    l.record(2, 2);
    assert_eq!(l.close().await.unwrap(), 1, "close wrote what was pending");
    l.record(3, 3);
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        batches.lock().unwrap().len(),
        2,
        "a closed loop flushed again"
    );
    assert_eq!(l.pending(), 1);
}
