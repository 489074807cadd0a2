//! What one replica counts, another sees: the jobs a replica completes are
//! counted in its memory and written within a few seconds, before it reads
//! the counts itself, and when it closes.

use homeostat_testkit::{self as backends, agent, completions, tenant};

use std::time::{Duration, Instant};

use homeostat_model::{NewJob, PlanTier};
use homeostat_store::{Completion, Store, StoreClock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_the_jobs_another_completed_once_it_wrote_its_counts() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let one = test
        .replica_on(StoreClock::system())
        .await
        .expect("PostgreSQL");
    let two = test
        .replica_on(StoreClock::system())
        .await
        .expect("PostgreSQL");
    let t = tenant(&test, "acme", PlanTier::Standard).await;
    let a = agent(&test, Some(t), &["q"]).await;
    let jobs: Vec<NewJob> = (0..4).map(|_| NewJob::new("q", "build")).collect();
    one.enqueue_batch(t, &jobs).await.unwrap();
    let claimed = one.claim(a, 4, Duration::from_secs(60)).await.unwrap();
    let done: Vec<Completion> = completions(&claimed);
    one.complete_batch(&done).await.unwrap();

    let succeeded = |store: &Store| {
        let store = store.clone();
        async move {
            let since = store.now() - jiff::SignedDuration::from_secs(3600);
            store
                .finished_per_minute(since)
                .await
                .unwrap()
                .iter()
                .map(|m| m.succeeded)
                .sum::<u64>()
        }
    };
    // Written within a few seconds, without the first replica reading or
    // closing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while succeeded(&two).await < 4 {
        assert!(Instant::now() < deadline, "the counts were never written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(succeeded(&two).await, 4);
    // Counted since then: written when the replica closes.
    let jobs: Vec<NewJob> = (0..2).map(|_| NewJob::new("q", "build")).collect();
    one.enqueue_batch(t, &jobs).await.unwrap();
    let claimed = one.claim(a, 2, Duration::from_secs(60)).await.unwrap();
    let done: Vec<Completion> = completions(&claimed);
    one.complete_batch(&done).await.unwrap();
    one.close().await;
    assert_eq!(succeeded(&two).await, 6);
    two.close().await;
    test.cleanup().await;
}
