//! The daemon's HTTP endpoint under a hostile flood (issue 19, point 1): 2,000 idle
//! connections and 500 clients scraping `/metrics` in a loop for 30 s. Before the fix
//! the idle connections used up the daemon's file descriptors (it exited), and each
//! scrape opened its own sessions on the primary (85 at once, and applications got
//! "too many clients"). Now the daemon keeps scheduling and applying uploads, holds at
//! most 2 + (replicas) sessions for metrics and health at any moment, and `/health`
//! answers within a second once the flood stops.

use std::time::{Duration, Instant};

use pgmaint_e2e::*;

/// Raise this process's soft limit of open files to the hard one: the flood needs
/// more than the usual 1,024 descriptors.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// One scrape attempt; errors (a connection closed over the cap) are the flood's lot.
async fn try_scrape(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n")
            .await?;
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).await?;
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_idle_connections_and_scrapes_neither_stops_the_daemon_nor_floods_the_primary() {
    let limit = raise_open_files_limit();
    let idle = 2_000.min(limit.saturating_sub(800) as usize);
    let c = Cluster::up("http-flood", 1);
    let p = c.primary().await;
    seed_blobs(&p, BLOBS, "bigint", "g", 500).await;
    p.batch_execute("UPDATE public.blobs SET payload_md5 = 'x' WHERE id = 5")
        .await
        .unwrap();
    let addr = free_address();
    let body = format!(
        "[limits]\nkeep_unpaused = 0\n[daemon]\nlisten = \"{addr}\"\n{}",
        blobs_task("every = \"2s\"")
    );
    let cfg = c.write_config("flood.toml", &body);
    c.init_ready(&cfg).await;
    let mut d = Daemon::start(&c, &cfg, 1);
    wait_for("the endpoint", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let applied = "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed'";
    wait_for("a first upload", Duration::from_secs(30), || async {
        count(&p, applied).await >= 1
    })
    .await;

    // The flood: idle connections held open, and scrapers in a loop, for 30 s.
    let mut held = Vec::new();
    for _ in 0..idle {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            held.push(s);
        }
    }
    let flood_started = Instant::now();
    let before = count(&p, applied).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let scrapers: Vec<_> = (0..500)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    try_scrape(addr).await;
                }
            })
        })
        .collect();
    let sessions = "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name IN ('pgmaint-metrics', 'pgmaint-health')";
    let r1 = c.replica(1).await;
    let mut most = 0;
    while flood_started.elapsed() < Duration::from_secs(30) {
        let n = count(&p, sessions).await + count(&r1, sessions).await;
        most = most.max(n);
        // Idle connections dropped by the daemon's time-outs come back, as a flood does.
        held.retain(|s| s.peer_addr().is_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for s in scrapers {
        let _ = s.await;
    }
    drop(held);
    // The daemon kept its schedule and its uploads through the flood.
    let after = count(&p, applied).await;
    assert!(
        after > before,
        "no upload applied during the flood ({before} before, {after} after)\n{}",
        d.log()
    );
    assert!(
        most <= 2 + 1,
        "{most} sessions for metrics and health at once (at most 2 + 1 replica)"
    );
    // /health answers within a second once the flood stops.
    let asked = Instant::now();
    let (status, text) = tokio::time::timeout(Duration::from_secs(5), http_get(addr, "/health"))
        .await
        .expect("/health answers");
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "/health took {:?} after the flood",
        asked.elapsed()
    );
    d.terminate().await;
    assert!(!d.log().contains("Too many open files"), "{}", d.log());
}
