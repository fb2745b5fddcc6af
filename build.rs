//! Builds the example plugins in `taskflows/` for `wasm32-wasip2` and copies
//! them into `plugins/`, so `cargo run` starts the hub with them loaded.
//!
//! The components are also kept in `$OUT_DIR/components`, with the test
//! and benchmark fixtures: `faults` in two variants, `load-faults` once per
//! fault, and `echo`. The integration tests and benchmarks find that folder
//! through the `TASKHUB_TEST_COMPONENTS` variable set here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates copied into `plugins/`: (file the crate builds, plugin name).
const EXAMPLES: &[(&str, &str)] = &[
    ("story.wasm", "story"),
    ("llm_mock.wasm", "llm-mock"),
    ("interview.wasm", "interview"),
    ("flaky.wasm", "flaky"),
    ("remote.wasm", "remote"),
    ("teams.wasm", "teams"),
];

/// Faults of the `load-faults` fixture, one component each.
const LOAD_FAULTS: &[&str] = &[
    "none",
    "trap-definitions",
    "trap-environments",
    "loop",
    "alloc",
    "stack",
];

fn main() {
    println!("cargo:rerun-if-changed=taskflows");
    println!("cargo:rerun-if-changed=wit");

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("guests");
    let built = target_dir.join("wasm32-wasip2").join("release");
    let components = out.join("components");
    std::fs::create_dir_all(&components).expect("failed to create the components folder");

    check_target_installed();
    build_guests(&root, &target_dir, &[], &[]);
    for (file, name) in EXAMPLES {
        copy_if_changed(&built.join(file), &components.join(format!("{name}.wasm")));
    }
    // Built, but not copied into `plugins/`: test fixtures, and the real
    // `llm` adapter, which needs a manifest with an endpoint and a key.
    for (file, name) in [
        ("faults.wasm", "faults"),
        ("echo.wasm", "echo"),
        ("llm_openai.wasm", "llm-openai"),
    ] {
        copy_if_changed(&built.join(file), &components.join(format!("{name}.wasm")));
    }

    // The second variant of `faults`, for the hot-reload tests.
    let variant = ["--package", "faults", "--features", "variant-b"];
    build_guests(&root, &target_dir, &variant, &[]);
    copy_if_changed(
        &built.join("faults.wasm"),
        &components.join("faults-b.wasm"),
    );

    // One `load-faults` component per fault, for the fault tests.
    for fault in LOAD_FAULTS {
        let package = ["--package", "load-faults"];
        build_guests(&root, &target_dir, &package, &[("LOAD_FAULT", fault)]);
        let target = components.join(format!("load-{fault}.wasm"));
        copy_if_changed(&built.join("load_faults.wasm"), &target);
    }

    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).expect("failed to create plugins/");
    for (_, name) in EXAMPLES {
        let file = format!("{name}.wasm");
        copy_if_changed(&components.join(&file), &plugins.join(&file));
    }
    println!(
        "cargo:rustc-env=TASKHUB_TEST_COMPONENTS={}",
        components.display()
    );
}

fn check_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("failed to run rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let target = Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2");
    if !target.exists() {
        panic!(
            "the wasm32-wasip2 target is not installed, so the example plugins cannot be \
             built; run `rustup target add wasm32-wasip2` and build again"
        );
    }
}

fn build_guests(root: &Path, target_dir: &Path, extra: &[&str], variables: &[(&str, &str)]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root.join("taskflows"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir)
        .args(extra)
        .envs(variables.iter().copied());
    // The host build's flags and wrappers are for the host, not for wasm.
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(variable);
    }
    let output = command
        .output()
        .expect("failed to run cargo for the example plugins");
    if !output.status.success() {
        panic!(
            "building the example plugins in taskflows/ failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Copies `from` to `to` unless `to` already has the same bytes. The copy
/// goes through a temporary file and a rename, so a running hub that
/// watches `plugins/` never reads half a file.
fn copy_if_changed(from: &Path, to: &Path) {
    let bytes = std::fs::read(from)
        .unwrap_or_else(|err| panic!("failed to read {}: {err}", from.display()));
    if std::fs::read(to).is_ok_and(|existing| existing == bytes) {
        return;
    }
    let temporary = to.with_extension("wasm.partial");
    std::fs::write(&temporary, &bytes)
        .unwrap_or_else(|err| panic!("failed to write {}: {err}", temporary.display()));
    std::fs::rename(&temporary, to)
        .unwrap_or_else(|err| panic!("failed to move {} into place: {err}", to.display()));
}
