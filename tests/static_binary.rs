//! A static glibc binary uses glibc's rseq area (issue 13, item 1).
//!
//! In a binary linked with `-C target-feature=+crt-static`, `dlsym` finds no
//! `__rseq_offset`/`__rseq_size`; percid used to try registering an area of its own,
//! which the kernel refuses (glibc registered one), and every thread ran on the
//! portable backend. percid now also looks the symbols up as weak link-time
//! references. This test builds `tests/plugin`'s small status program statically
//! (offline, debug, its own target dir) and checks that its main thread and a
//! spawned thread report `rseq owner glibc`, or, in the modes where glibc does not
//! register or percid is told not to use rseq, the expected owner.
//!
//! scripts/test's `static-status` step checks the real `percid status` the same way.

use std::path::Path;
use std::process::Command;

/// The owner the status program must report in the mode the test runs in.
fn expected_owner() -> &'static str {
    let forced = std::env::var("PERCID_BACKEND").is_ok_and(|b| b == "portable" || b == "simulated");
    let glibc_off =
        std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.pthread.rseq=0"));
    if forced {
        "none"
    } else if glibc_off {
        "self"
    } else {
        "glibc"
    }
}

#[test]
fn static_binary_uses_glibc_area() {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        eprintln!("not x86_64 Linux glibc: nothing to check");
        return;
    }
    // The status program needs a kernel with rseq; valgrind or an old kernel has none.
    if percid::rseq::status().backend != percid::rseq::Backend::Rseq
        && std::env::var_os("PERCID_BACKEND").is_none()
    {
        eprintln!(
            "no rseq here ({}): nothing to check",
            percid::rseq::status()
        );
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugin/Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--bin", "plugin-status"])
        .args(["--target", "x86_64-unknown-linux-gnu", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .expect("run cargo to build the static status program");
    assert!(
        status.success(),
        "building the static status program failed"
    );
    let bin = target.join("x86_64-unknown-linux-gnu/debug/plugin-status");

    // Static indeed: no program interpreter (PT_INTERP), so no dynamic linker and
    // no symbols for dlsym to find.
    let elf = std::fs::read(&bin).expect("read the binary");
    assert!(
        !has_interpreter(&elf),
        "{} has a program interpreter: not a static binary",
        bin.display()
    );

    let out = Command::new(&bin)
        .output()
        .expect("run the static status program");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the static status program failed: {}",
        out.status
    );
    let want = format!("rseq owner {},", expected_owner());
    for who in ["main: ", "thread: "] {
        let line = text
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("no `{who}` line in the output"));
        assert!(line.contains(&want), "expected `{want}` in: {line}");
    }
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}
