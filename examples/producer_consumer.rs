//! The store without channels: a producer process appends blobs to a shared
//! namespace and sends each 24-byte handle to a consumer process over a
//! pipe (any channel would do); the consumer resolves each handle to a
//! zero-copy view, checks it, and acknowledges it. This program is both: it
//! starts itself again as the consumer.
//!
//! ```sh
//! cargo run --release --example producer_consumer
//! ```

use stable_fragmented_buffer::{BlobStoreLifecycleExt, Config, OverflowHandle, PinnedBlobStore};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const BLOBS: u32 = 2_000;

fn blob(i: u32) -> Vec<u8> {
    // Sizes from 1 byte to 96 KiB, each byte derived from the blob's number.
    let len = 1 + (i as usize * 7919) % (96 << 10);
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(ns) = std::env::args().nth(1) {
        return consumer(&ns);
    }
    let ns = format!("example-pc-{}", std::process::id());
    // The creator owns the namespace: dropping `store` removes its files.
    let store = Arc::new(PinnedBlobStore::new_shared(
        Config::default(),
        &ns,
        1 << 20,
    )?);
    // Reclaims what the consumer acknowledged.
    store.start_cleanup(Duration::from_millis(10));

    let mut child = Command::new(std::env::current_exe()?)
        .arg(&ns)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_consumer = child.stdin.take().ok_or("no stdin")?;
    let mut bytes = 0usize;
    for i in 0..BLOBS {
        let data = blob(i);
        bytes += data.len();
        let handle = store.append_shared(&data)?;
        to_consumer.write_all(&handle.to_array())?;
    }
    drop(to_consumer); // end of stream
    let mut report = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_to_string(&mut report)?;
    if !child.wait()?.success() {
        return Err("the consumer failed".into());
    }
    print!("{report}");
    println!(
        "producer: {BLOBS} blobs, {:.1} MiB appended; {} chunk file(s) now",
        bytes as f64 / (1 << 20) as f64,
        store.stats().chunks
    );
    Ok(())
}

fn consumer(ns: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = PinnedBlobStore::attach_shared(Config::default(), ns)?;
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut wire = [0u8; 24];
    let mut checked = 0u32;
    while input.fill_buf().map(|b| !b.is_empty())? {
        input.read_exact(&mut wire)?;
        let handle = OverflowHandle::from_array(&wire);
        let view = store.resolve_ref_checked(&handle)?;
        if view[..] != blob(checked)[..] {
            return Err(format!("blob {checked} differs").into());
        }
        drop(view);
        store.acknowledge_shared(&handle);
        checked += 1;
    }
    println!("consumer: {checked} blobs resolved zero-copy, every byte checked, all acknowledged");
    Ok(())
}
