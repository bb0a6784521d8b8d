//! Streaming probe for `bench/gateway.sh`: opens streamed chat completions against the mock
//! upstream (directly or through the gateway) and measures what a client sees.
//!
//! - `latency URL KEY N`: N streams one after the other; prints the time to first byte and,
//!   for every chunk, how long after the upstream wrote it (its `sent_ns`) the client read it.
//! - `hold URL KEY CONCURRENCY`: opens CONCURRENCY streams at once and reads them to the end;
//!   prints how many completed (the script samples the gateway's memory meanwhile).
//!
//! Output: one JSON object on stdout. Usage: `stream_probe latency http://… sk_… 200`

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::json;

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

fn body(chunks: u32, interval_ms: u32) -> serde_json::Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "stream please"}],
        // Read by the benchmark's mock upstream: how many chunks, how far apart.
        "metadata": {"chunks": chunks.to_string(), "interval_ms": interval_ms.to_string()},
    })
}

/// One stream: (time to first byte in µs, per-chunk delays in µs, chunks read).
async fn one(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    chunks: u32,
    interval_ms: u32,
) -> anyhow::Result<(f64, Vec<f64>, usize)> {
    let started = Instant::now();
    let res = client
        .post(url)
        .bearer_auth(key)
        .json(&body(chunks, interval_ms))
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "status {}", res.status());
    let mut stream = res.bytes_stream();
    let mut ttfb = None;
    let mut delays = Vec::new();
    let mut pending = Vec::new();
    let mut read = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let arrived = now_ns();
        if ttfb.is_none() {
            ttfb = Some(started.elapsed().as_secs_f64() * 1e6);
        }
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if let Some(sent) = text
                .split("\"sent_ns\":")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<i128>().ok())
            {
                delays.push((arrived - sent) as f64 / 1e3);
            }
            read += 1;
        }
    }
    Ok((ttfb.unwrap_or_default(), delays, read))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url, key) = (args[1].as_str(), args[2].clone(), args[3].clone());
    let n: usize = args[4].parse()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n.max(1))
        .build()?;
    match mode {
        "latency" => {
            let (mut ttfbs, mut delays) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let (t, d, _) = one(&client, &url, &key, 20, 2).await?;
                ttfbs.push(t);
                delays.extend(d);
            }
            let out = json!({
                "streams": n,
                "chunks": delays.len(),
                "ttfb_us": {"p50": pct(&mut ttfbs, 50.0), "p99": pct(&mut ttfbs, 99.0)},
                "chunk_delay_us": {"p50": pct(&mut delays, 50.0), "p99": pct(&mut delays, 99.0), "max": pct(&mut delays, 100.0)},
            });
            println!("{out}");
        }
        "hold" => {
            // Long streams (100 chunks 100 ms apart: 10 s each), all open at once.
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (client, url, key) = (client.clone(), url.clone(), key.clone());
                    tokio::spawn(async move { one(&client, &url, &key, 100, 100).await })
                })
                .collect();
            let mut ok = 0;
            let mut errors = Vec::new();
            for t in tasks {
                match t.await? {
                    Ok((_, _, read)) if read >= 100 => ok += 1,
                    Ok((_, _, read)) => errors.push(format!("short stream: {read} events")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors.truncate(5);
            println!(
                "{}",
                json!({"streams": n, "completed": ok, "seconds": started.elapsed().as_secs_f64(), "errors": errors})
            );
        }
        other => anyhow::bail!("unknown mode {other}: latency | hold"),
    }
    Ok(())
}
