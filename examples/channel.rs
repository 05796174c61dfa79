//! Two processes on one channel: this program creates a namespace and a
//! broadcast channel, starts itself again as a subscriber process, and
//! publishes small messages (inline in the ring slot) and large ones
//! (through the store, zero-copy on both sides with a loan).
//!
//! ```sh
//! cargo run --release --example channel
//! ```

use stable_fragmented_buffer::{Config, PinnedBlobStore};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(ns) = std::env::args().nth(1) {
        return subscriber(&ns);
    }
    let ns = format!("example-channel-{}", std::process::id());
    // The creator owns the namespace: dropping `store` removes its files.
    let store = PinnedBlobStore::new_shared(Config::default(), &ns, 4 << 20)?;
    let frames = store.publisher("frames")?;

    let mut child = Command::new(std::env::current_exe()?)
        .arg(&ns)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?; // "subscribed"

    for i in 0u32..10 {
        if i % 2 == 0 {
            // Small: copied into the ring slot.
            frames.send(format!("status {i}").as_bytes())?;
        } else {
            // Large: written in place in shared memory, then published.
            let mut loan = frames.loan(1 << 20)?;
            loan[..4].copy_from_slice(&i.to_le_bytes());
            loan[4..].fill(i as u8);
            loan.send()?;
        }
    }
    drop(frames); // the subscriber sees the channel disconnected once drained

    let mut report = String::new();
    for l in out.lines() {
        report.push_str(&l?);
        report.push('\n');
    }
    print!("{report}");
    if !child.wait()?.success() {
        return Err("subscriber failed".into());
    }
    Ok(())
}

fn subscriber(ns: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = PinnedBlobStore::attach_shared(Config::default(), ns)?;
    let frames = store.subscriber("frames")?;
    println!("subscribed");
    std::io::stdout().flush()?;
    let mut count = 0;
    loop {
        match frames.recv_timeout(Duration::from_secs(10)) {
            Ok(m) if m.is_overflow() => {
                let i = u32::from_le_bytes(m[..4].try_into()?);
                assert!(m[4..].iter().all(|&b| b == i as u8));
                println!("frame {i}: {} bytes, zero-copy from the store", m.len());
            }
            Ok(m) => println!("{}: inline in the ring", String::from_utf8_lossy(&m)),
            Err(e) => {
                println!("{count} messages, then: {e}");
                break;
            }
        }
        count += 1;
    }
    assert_eq!(count, 10);
    Ok(())
}
