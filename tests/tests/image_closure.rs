//! The container images' runtime closure, without a container engine (these machines have
//! none): each binary runs in a chroot holding only what its Dockerfile stage provides.
//! That is distroless/cc's C runtime (the dynamic loader, libc, libm, libgcc_s) for both,
//! plus the two libraries the Dockerfile copies for the link (libnftnl, libmnl). No shell,
//! no iproute2, no nft. Needs root (chroot).

use std::path::{Path, PathBuf};
use std::process::Command;

use wgnet_tests::fixtures::TempDir;
use wgnet_tests::link::workspace_binary;

/// What gcr.io/distroless/cc-debian12 ships of the C runtime.
const DISTROLESS_CC: &[&str] = &["libc.so.6", "libm.so.6", "libgcc_s.so.1"];
/// What the Dockerfile adds to the link image.
const LINK_LIBS: &[&str] = &["libnftnl.so.11", "libmnl.so.0"];

fn multiarch() -> String {
    let out = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .expect("gcc (make deps installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A root with the loader, `libs` and `bin` at /usr/local/bin/<name>.
fn root_with(bin: &Path, libs: &[&str]) -> (TempDir, PathBuf) {
    let root = TempDir::new();
    let arch = multiarch();
    let libdir = root.0.join(format!("usr/lib/{arch}"));
    std::fs::create_dir_all(&libdir).expect("lib dir");
    std::os::unix::fs::symlink("usr/lib", root.0.join("lib")).expect("lib link");
    std::fs::create_dir_all(root.0.join("lib64")).expect("lib64");
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        root.0.join("lib64/ld-linux-x86-64.so.2"),
    )
    .expect("loader");
    for lib in libs {
        // Follow the soname link to the real file, as `cp -a` of both does.
        let src = std::fs::canonicalize(format!("/usr/lib/{arch}/{lib}")).expect("library");
        std::fs::copy(&src, libdir.join(lib)).expect("copy library");
    }
    let dest = root.0.join("usr/local/bin");
    std::fs::create_dir_all(&dest).expect("bin dir");
    let name = bin.file_name().expect("name");
    std::fs::copy(bin, dest.join(name)).expect("copy binary");
    let inside = PathBuf::from("/usr/local/bin").join(name);
    (root, inside)
}

fn run_in(root: &Path, inside: &Path, arg: &str) -> (bool, String) {
    let out = Command::new("chroot")
        .arg(root)
        .arg(inside)
        .arg(arg)
        .output()
        .expect("chroot");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_dockerfile_copies_exactly_the_libraries_the_link_links() {
    let dockerfile =
        std::fs::read_to_string(wgnet_tests::repo_root().join("Dockerfile")).expect("Dockerfile");
    for lib in LINK_LIBS {
        assert!(
            dockerfile.contains(lib),
            "the Dockerfile does not copy {lib}"
        );
    }
    assert!(dockerfile.contains("distroless/cc-debian12:nonroot AS operator"));
    assert!(dockerfile.contains("distroless/cc-debian12 AS link"));
}

#[test]
fn each_binary_runs_with_only_its_image_contents() {
    let libs: Vec<&str> = DISTROLESS_CC.iter().chain(LINK_LIBS).copied().collect();
    let (root, inside) = root_with(&workspace_binary("wgnet-link"), &libs);
    let (ok, out) = run_in(&root.0, &inside, "--help");
    assert!(ok, "wgnet-link in its image root: {out}");
    assert!(out.contains("usage"), "{out}");

    let (root, inside) = root_with(&workspace_binary("wgnet-operator"), DISTROLESS_CC);
    let (ok, out) = run_in(&root.0, &inside, "--help");
    assert!(ok, "wgnet-operator in its image root: {out}");
    assert!(out.contains("usage"), "{out}");

    // The check can fail: without the copied libraries the link does not start.
    let (root, inside) = root_with(&workspace_binary("wgnet-link"), DISTROLESS_CC);
    let (ok, out) = run_in(&root.0, &inside, "--help");
    assert!(!ok, "the link started without libnftnl/libmnl: {out}");
}
