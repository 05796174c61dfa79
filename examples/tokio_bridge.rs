//! Channels under tokio (feature `async`): one task feeds a work queue from
//! a TCP socket, another serves a broadcast channel's messages to TCP
//! clients, and a worker task in between turns each job into a result.
//!
//! ```text
//! TCP client --lines--> [feeder] --"jobs" queue--> [worker] --"results" broadcast--> [server] --frames--> TCP clients
//! ```
//!
//! The channels are shared memory, so the worker (or more workers, or more
//! servers) could as well run in other processes. Here one process plays
//! every part, with a demonstration client that sends ten lines and reads
//! the ten results back; everything listens on 127.0.0.1 only.
//!
//! Run it with `cargo run --example tokio_bridge`.

use stable_fragmented_buffer::{Config, PinnedBlobStore, Publisher, Receiver, Sender, Subscriber};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Feeds the work queue: each line a client writes becomes one job.
async fn feeder(listener: TcpListener, jobs: Sender) -> Result<(), Error> {
    let (socket, _) = listener.accept().await?;
    let mut lines = BufReader::new(socket).lines();
    while let Some(line) = lines.next_line().await? {
        // Waits without blocking the runtime while the queue is full.
        jobs.send_async(line.as_bytes()).await?;
    }
    Ok(()) // Dropping `jobs` tells the worker there is no more work.
}

/// Takes jobs as they come and publishes each result.
async fn worker(jobs: Receiver, results: Publisher) -> Result<(), Error> {
    let mut n = 0u32;
    loop {
        match jobs.recv_async().await {
            Ok(job) => {
                n += 1;
                let text = String::from_utf8_lossy(&job).to_uppercase();
                results
                    .send_async(format!("{n}: {text}").as_bytes())
                    .await?;
            }
            // No producer left and the queue drained: done.
            Err(stable_fragmented_buffer::RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves the results to one TCP client: each message as a frame (a
/// 4-byte little-endian length, then the bytes), read zero-copy from the
/// channel and written straight to the socket.
async fn serve(mut socket: TcpStream, results: Subscriber) -> Result<(), Error> {
    use futures_lite_stream::next;
    let mut stream = results.stream();
    while let Some(msg) = next(&mut stream).await {
        let msg = msg?;
        socket.write_all(&(msg.len() as u32).to_le_bytes()).await?;
        socket.write_all(&msg).await?;
    }
    Ok(()) // The publisher is gone: the stream has ended.
}

/// The smallest `StreamExt::next`, to keep this example's dependencies to
/// tokio.
mod futures_lite_stream {
    use futures_core::Stream;
    use std::pin::Pin;

    pub async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let ns = format!("tokio-bridge-{}", std::process::id());
    let store = Arc::new(PinnedBlobStore::new_shared(
        Config::default(),
        &ns,
        1 << 20,
    )?);

    let jobs_in = TcpListener::bind("127.0.0.1:0").await?;
    let results_out = TcpListener::bind("127.0.0.1:0").await?;
    let (in_addr, out_addr) = (jobs_in.local_addr()?, results_out.local_addr()?);

    // The server subscribes each client as it connects.
    let server = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (socket, _) = results_out.accept().await?;
            serve(socket, store.subscriber("results")?).await
        })
    };

    // The demonstration client: results first (a subscriber receives what
    // is published after it joined), then the jobs.
    let mut results_conn = TcpStream::connect(out_addr).await?;
    // Wait until the server has subscribed: a probe on the channel.
    let probe = store.publisher("results")?;
    while probe.subscriber_count() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }

    let feeder = tokio::spawn(feeder(jobs_in, store.sender("jobs")?));
    let worker = tokio::spawn(worker(store.receiver("jobs")?, store.publisher("results")?));
    drop(probe);

    let mut jobs_conn = TcpStream::connect(in_addr).await?;
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliett",
    ];
    for w in words {
        jobs_conn.write_all(format!("{w}\n").as_bytes()).await?;
    }
    jobs_conn.shutdown().await?; // End of jobs.

    let mut got = Vec::new();
    for _ in 0..words.len() {
        let mut len = [0u8; 4];
        results_conn.read_exact(&mut len).await?;
        let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
        results_conn.read_exact(&mut frame).await?;
        got.push(String::from_utf8(frame)?);
    }
    feeder.await??;
    worker.await??;
    server.await??; // The worker's publisher is gone: the stream ended.
    for line in &got {
        println!("{line}");
    }
    let want: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}: {}", i + 1, w.to_uppercase()))
        .collect();
    assert_eq!(got, want);
    println!(
        "tokio bridge: {} jobs in over TCP, {} results out over TCP",
        words.len(),
        got.len()
    );
    Ok(())
}
