//! `sfb demo`: a producer process and a consumer process on a channel.

use super::*;

// Precise monotonic nanoseconds, comparable between processes.
use sfb_bench::mono_ns;

/// Deterministic payload of message `seq`: seq, send time, then bytes
/// derived from seq, so the consumer can check every byte.
pub(crate) fn fill(buf: &mut [u8], seq: u64) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
}

/// Sequence bit of the paced (latency) messages of the demo.
pub(crate) const PACED: u64 = 1 << 63;
/// Paced messages the demo sends after the stream, one per interval.
pub(crate) const PACED_MESSAGES: u64 = 2_000;
pub(crate) const PACED_INTERVAL: Duration = Duration::from_micros(200);

pub(crate) fn demo(messages: u64, size: usize, chunk_size: usize, max_chunks: u32) -> AnyResult {
    if size < 16 {
        return Err("--size must be at least 16 bytes (sequence number and timestamp)".into());
    }
    let ns = format!("sfb-demo-{}", std::process::id());
    let store = Arc::new(PinnedBlobStore::new_shared_with_limit(
        Config::default(),
        &ns,
        chunk_size,
        Some(max_chunks),
    )?);
    let cleaner = store.start_cleanup_thread(Duration::from_millis(2));
    let tx = store.sender("demo")?;
    println!(
        "namespace {ns}: chunk {chunk_size} B, at most {max_chunks} chunks; work queue \"demo\" (messages up to {} B inline in the ring, larger through the store)",
        tx.inline_capacity()
    );
    println!("sending {messages} messages of {size} B as fast as they go, then {PACED_MESSAGES} one every {} us", PACED_INTERVAL.as_micros());

    let mut child = Command::new(std::env::current_exe()?)
        .args(["demo-consumer", "--namespace", &ns])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no consumer stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        return Err(format!("consumer did not start: {line:?}").into());
    }
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    for seq in 0..messages {
        fill(&mut buf, seq);
        buf[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        tx.send(&buf)?;
    }
    let elapsed = start.elapsed();
    for seq in 0..PACED_MESSAGES {
        std::thread::sleep(PACED_INTERVAL);
        fill(&mut buf, seq | PACED);
        buf[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        tx.send(&buf)?;
    }
    // The consumer sees the channel disconnected once it has drained it.
    drop(tx);
    let mut report = String::new();
    out.read_to_string(&mut report)?;
    let status = child.wait()?;
    cleaner.stop();
    let peak = store.stats().chunks;
    drop(store);
    let shm = inspect::shm_dir();
    let leftovers: Vec<String> = std::fs::read_dir(&shm)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{ns}_")))
        .collect();
    print!("{report}");
    let secs = elapsed.as_secs_f64();
    let bytes = messages as f64 * size as f64;
    println!(
        "producer: {messages} messages, {:.1} MB in {:.3} s = {:.2} M msg/s, {:.2} GB/s; {peak} chunk(s) at the end",
        bytes / 1e6,
        secs,
        messages as f64 / secs / 1e6,
        bytes / secs / 1e9
    );
    if !status.success() {
        return Err(format!("consumer failed: {status}").into());
    }
    if !leftovers.is_empty() {
        return Err(format!(
            "files left in {}: {leftovers:?}; remove them with `sfb cleanup {ns}`",
            shm.display()
        )
        .into());
    }
    println!("nothing left in {}", shm.display());
    Ok(())
}

pub(crate) fn demo_consumer(ns: &str) -> AnyResult {
    let store = PinnedBlobStore::attach_shared(Config::default(), ns)?;
    let rx = store.receiver("demo")?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut expected = Vec::new();
    let (mut count, mut paced, mut bytes, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let (mut stream_lat, mut paced_lat) = (Vec::new(), Vec::new());
    for m in rx.iter() {
        let now = mono_ns();
        let data: &[u8] = &m;
        if data.len() < 16 {
            bad += 1;
            continue;
        }
        let seq = u64::from_le_bytes(data[0..8].try_into()?);
        let sent = u64::from_le_bytes(data[8..16].try_into()?);
        expected.resize(data.len(), 0);
        fill(&mut expected, seq);
        expected[8..16].copy_from_slice(&data[8..16]);
        let (want, lat) = if seq & PACED != 0 {
            (paced | PACED, &mut paced_lat)
        } else {
            (count, &mut stream_lat)
        };
        if seq != want || expected != data {
            bad += 1;
        }
        lat.push(now.saturating_sub(sent));
        if seq & PACED != 0 {
            paced += 1;
        } else {
            count += 1;
        }
        bytes += data.len() as u64;
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    println!(
        "consumer (pid {}): {} messages verified byte for byte ({:.1} MB), {bad} bad",
        std::process::id(),
        count + paced,
        bytes as f64 / 1e6,
    );
    println!(
        "one-way latency, paced messages (blocking receiver): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        pct(&mut paced_lat, 0.5),
        pct(&mut paced_lat, 0.99),
        pct(&mut paced_lat, 1.0)
    );
    println!(
        "send-to-receive time while streaming (includes queueing in the ring): p50 {:.1} us, p99 {:.1} us",
        pct(&mut stream_lat, 0.5),
        pct(&mut stream_lat, 0.99),
    );
    if bad > 0 {
        return Err(format!("{bad} messages did not verify").into());
    }
    Ok(())
}
