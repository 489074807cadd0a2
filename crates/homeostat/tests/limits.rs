//! Connection limits over real sockets: silent, trickling and idle
//! connections are closed, a declared oversized body is refused before it
//! is sent, and more silent connections than the open-file limit allows do
//! not keep a probe from being answered.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{client, data_dir, ready, start_with, start_with_open_files};

/// Reads until the server closes the connection (or `within` passes, a
/// guard against a hang): what it sent.
fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        // Reset by the server is closed too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&got).into_owned())
        }
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_trickling_and_idle_connections_are_closed() {
    let dir = data_dir();
    let server = start_with(
        &dir,
        &[
            ("HOMEOSTAT_API__HEADER_READ_TIMEOUT", "1s"),
            ("HOMEOSTAT_API__HEARTBEAT_INTERVAL", "500ms"),
        ],
    );
    ready(&client(), &server).await;
    let address = server.address.clone();
    tokio::task::spawn_blocking(move || {
        // Silent: never a byte.
        let mut silent = TcpStream::connect(&address).unwrap();
        assert!(
            read_to_close(&mut silent, Duration::from_secs(20)).is_some(),
            "a silent connection stayed open"
        );
        // Trickling: a header line every half second, never the end.
        let mut trickle = TcpStream::connect(&address).unwrap();
        let started = Instant::now();
        trickle.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let closed = loop {
            std::thread::sleep(Duration::from_millis(500));
            if trickle.write_all(b"X-Slow: 1\r\n").is_err() {
                break true;
            }
            if started.elapsed() > Duration::from_secs(20) {
                break false;
            }
        };
        assert!(closed, "a connection trickling its headers stayed open");
        // Idle keep-alive: one request answered, then nothing.
        let mut idle = TcpStream::connect(&address).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answered = read_to_close(&mut idle, Duration::from_secs(20))
            .expect("an idle keep-alive connection stayed open");
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_too_large_is_refused_before_it_is_sent() {
    let dir = data_dir();
    let server = start_with(&dir, &[]);
    ready(&client(), &server).await;
    let address = server.address.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&address).unwrap();
        s.write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000000000\r\n\r\n",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .expect("no answer until the body would have been sent");
        assert_eq!(&head, b"HTTP/1.1 413");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_silent_connections_than_files_do_not_silence_the_probes() {
    let dir = data_dir();
    // Silent connections are not timed out here: room is made by closing
    // the oldest idle one.
    let server = start_with_open_files(&dir, &[("HOMEOSTAT_API__HEADER_READ_TIMEOUT", "10m")], 256);
    let client = client();
    ready(&client, &server).await;
    let address = server.address.clone();
    let silent = tokio::task::spawn_blocking(move || {
        (0..300)
            .map(|_| TcpStream::connect(&address).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(silent.len(), 300);
    for _ in 0..5 {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let res = probe
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("/healthz did not answer with 300 silent connections open");
        assert_eq!(res.status(), 200);
    }
    drop(silent);
    let logged = server.stderr.lock().unwrap().clone();
    assert!(
        !logged.contains("accepting a connection failed"),
        "the server ran out of files: {logged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_can_have_a_listener_of_their_own() {
    let dir = data_dir();
    let port = common::free_port();
    let probes = format!("127.0.0.1:{port}");
    let server = start_with(&dir, &[("HOMEOSTAT_API__PROBES_LISTEN", &probes)]);
    let c = client();
    ready(&c, &server).await;
    let get = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    // The API's port no longer answers /metrics; the probes' port does,
    // with the probes, and nothing of the API.
    assert_eq!(get(server.url("/metrics")).await.status(), 404);
    let metrics = get(format!("http://{probes}/metrics")).await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("homeostat_jobs_counted_age_seconds")
    );
    assert_eq!(get(format!("http://{probes}/healthz")).await.status(), 200);
    assert_eq!(get(format!("http://{probes}/readyz")).await.status(), 200);
    assert_eq!(get(format!("http://{probes}/v1/jobs")).await.status(), 404);
    assert_eq!(get(server.url("/healthz")).await.status(), 200);
}
