//! The `sfb` binary, run for real.

mod common;

use common::Ns;
use stable_fragmented_buffer::{Config, PinnedBlobStore};
use std::process::Command;

fn sfb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfb"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_moves_verified_payloads_between_two_processes_and_leaves_nothing() {
    let (code, out, err) = sfb(&[
        "demo",
        "--messages",
        "3000",
        "--size",
        "1000",
        "--chunk-size",
        "65536",
        "--max-chunks",
        "4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3000 messages verified byte for byte"),
        "{out}"
    );
    assert!(out.contains(", 0 bad"), "{out}");
    assert!(out.contains("nothing left in /dev/shm"), "{out}");
}

#[test]
fn cleanup_refuses_a_live_namespace_and_removes_it_with_force() {
    let ns = Ns::new("cli-cleanup");
    let store = PinnedBlobStore::new_shared(Config::default(), ns.as_str(), 65536).unwrap();
    let (code, _, err) = sfb(&["cleanup", ns.as_str()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is in use") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert_eq!(ns.files().len(), 2);
    let (code, out, err) = sfb(&["cleanup", "--force", ns.as_str()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 2 file(s)"), "{out}");
    assert!(ns.files().is_empty());
    drop(store);
}

#[test]
fn usage_errors_exit_2_and_bad_names_exit_1() {
    let (code, _, err) = sfb(&["no-such-command"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = sfb(&["cleanup", "../etc"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid namespace"), "{err}");
}
