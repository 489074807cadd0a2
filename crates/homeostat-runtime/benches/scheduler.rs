//! Scheduler overhead: many controllers with short intervals and empty
//! reconciles. Reports the CPU time the process used (as a share of one core)
//! and scheduling lateness (actual start − due time) percentiles.
//!
//! `cargo bench -p homeostat-runtime --bench scheduler -- [--controllers N]
//! [--interval-ms MS] [--seconds S] [--exclusive]`

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use homeostat_runtime::{
    BoxError, CancellationToken, Context, Controller, ControllerOptions, Manager, Reconciled,
    RunReason,
};

struct Empty {
    name: String,
    interval: Duration,
    lateness_us: Arc<Mutex<Vec<u64>>>,
}

impl Controller for Empty {
    fn name(&self) -> &str {
        &self.name
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn reconcile(&self, ctx: Context) -> Result<Reconciled, BoxError> {
        if ctx.reason() == RunReason::Tick {
            let late = SystemTime::now()
                .duration_since(ctx.scheduled_at())
                .unwrap_or_default();
            self.lateness_us
                .lock()
                .unwrap()
                .push(late.as_micros() as u64);
        }
        Ok(Reconciled::nothing())
    }
}

#[derive(Clone, Copy)]
struct Args {
    controllers: usize,
    interval: Duration,
    seconds: u64,
    exclusive: bool,
    baseline: bool,
    current_thread: bool,
}

fn args() -> Args {
    let mut args = Args {
        controllers: 1000,
        interval: Duration::from_millis(100),
        seconds: 10,
        exclusive: false,
        baseline: false,
        current_thread: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--controllers" => args.controllers = value().expect("--controllers N") as usize,
            "--interval-ms" => {
                args.interval = Duration::from_millis(value().expect("--interval-ms MS"))
            }
            "--seconds" => args.seconds = value().expect("--seconds S"),
            "--exclusive" => args.exclusive = true,
            "--baseline" => args.baseline = true,
            "--current-thread" => args.current_thread = true,
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// User + system CPU time of the whole process.
#[allow(unsafe_code)]
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we pass it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// The same schedule as bare tokio tasks (sleep to the jittered due time,
/// note the lateness, repeat): what the runtime's machinery is compared with.
async fn baseline(args: &Args, lateness: Arc<Mutex<Vec<u64>>>, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.controllers {
        let (interval, lateness, stop) = (args.interval, Arc::clone(&lateness), stop.clone());
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(i as u64);
            let mut due = SystemTime::now();
            loop {
                due += interval.mul_f64(0.9 + 0.2 * rng.f64());
                let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                let late = SystemTime::now().duration_since(due).unwrap_or_default();
                lateness.lock().unwrap().push(late.as_micros() as u64);
            }
        });
    }
    tasks.join_all().await;
}

fn main() {
    let args = args();
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    runtime.block_on(async {
        let lateness = Arc::new(Mutex::new(Vec::with_capacity(200_000)));
        let stop = CancellationToken::new();
        let mut manager = None;
        let mut bare = None;
        if args.baseline {
            let (a, l, s) = (args, Arc::clone(&lateness), stop.clone());
            bare = Some(tokio::spawn(async move { baseline(&a, l, s).await }));
        } else {
            let mut builder = Manager::builder().seed(1);
            for i in 0..args.controllers {
                builder
                    .register(
                        Empty {
                            name: format!("controller-{i:04}"),
                            interval: args.interval,
                            lateness_us: Arc::clone(&lateness),
                        },
                        ControllerOptions::default().exclusive(args.exclusive),
                    )
                    .unwrap();
            }
            manager = Some(builder.start().unwrap());
        }
        // Let the start-up burst pass before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;
        lateness.lock().unwrap().clear();

        let (cpu0, wall0) = (cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
        let mut samples = std::mem::take(&mut *lateness.lock().unwrap());
        if let Some(manager) = manager {
            manager.shutdown(Duration::from_secs(5)).await;
        }
        stop.cancel();
        if let Some(bare) = bare {
            bare.await.unwrap();
        }

        samples.sort_unstable();
        println!(
            "mode={} runtime={} controllers={} interval={:?} exclusive={} seconds={:.1}",
            if args.baseline {
                "bare-tokio"
            } else {
                "manager"
            },
            if args.current_thread {
                "current_thread"
            } else {
                "multi_thread(2)"
            },
            args.controllers,
            args.interval,
            args.exclusive,
            wall.as_secs_f64()
        );
        println!(
            "runs={} runs_per_s={:.0}",
            samples.len(),
            samples.len() as f64 / wall.as_secs_f64()
        );
        println!(
            "cpu={:.3}s cpu_share_of_one_core={:.2}%",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
        println!(
            "lateness_ms p50={:.3} p90={:.3} p99={:.3} max={:.3}",
            percentile(&samples, 0.50),
            percentile(&samples, 0.90),
            percentile(&samples, 0.99),
            percentile(&samples, 1.0)
        );
    });
}
