// SPDX-License-Identifier: MPL-2.0
//! Every example for application code runs in the VM suite, so none can rot.

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("GST_PLUGIN_PATH", format!("{ROOT}/target/release"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A counter from a printed stats structure (`name=(guint64)N`).
fn counter(stdout: &str, name: &str) -> u64 {
    let key = format!(" {name}=(guint64)");
    let at = stdout
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in: {stdout}"));
    stdout[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {name} in: {stdout}"))
}

fn assert_zero_copy(stdout: &str) {
    assert!(stdout.contains("copies=(guint64)0"), "{stdout}");
    assert!(stdout.contains("frames=(guint64)30"), "{stdout}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn rust_app_draws_into_the_proposed_pool() {
    let out = run(
        &format!("{ROOT}/target/debug/examples/appsrc_pool"),
        &["30"],
    );
    assert_zero_copy(&out);
    // The app's buffers were exported once each, not once per frame: a handful of pool
    // buffers, every other frame a cache hit.
    let exported = counter(&out, "exported");
    assert!(
        (1..=8).contains(&exported),
        "{exported} exports for 30 frames"
    );
    assert_eq!(exported + counter(&out, "export-cache-hits"), 30, "{out}");
}

#[test]
#[ignore = "needs the VM testbed"]
fn rust_app_allocates_from_the_heaps() {
    for heap in ["system", "reserved"] {
        let out = run(
            &format!("{ROOT}/target/debug/examples/heap_frames"),
            &[heap, "30"],
        );
        assert!(
            out.contains(&format!("heap {heap} (contiguous: {})", heap == "reserved")),
            "{out}"
        );
        assert!(out.contains("pushed 30 dma-heap frames"), "{out}");
    }
}

#[test]
#[ignore = "needs the VM testbed"]
fn c_program_uses_the_element_and_the_allocator() {
    let out = run(&format!("{ROOT}/target/examples-c/vmem_pipeline"), &[]);
    assert!(
        out.contains("dmaheap: 1048576 bytes of dma-buf memory from heap reserved"),
        "{out}"
    );
    assert_zero_copy(&out);
}

#[test]
#[ignore = "needs the VM testbed"]
fn python_scripts_use_the_element_and_the_allocator() {
    let out = run("python3", &[&format!("{ROOT}/examples/python/pipeline.py")]);
    assert_zero_copy(&out);
    let out = run(
        "python3",
        &[&format!("{ROOT}/examples/python/heapalloc.py"), "system"],
    );
    assert!(
        out.contains("dmaheap: allocated 1048576 bytes of dma-buf memory from heap system"),
        "{out}"
    );
}
