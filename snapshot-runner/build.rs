//! Links OpenSSL's libcrypto for file_checksum's MD5 when it is there to link (the
//! `libssl-dev`-style package with pkg-config data). It hashes ~20% faster than the
//! md-5 crate on x86; without it, the md-5 crate is used and nothing else changes.
//! `PGMAINT_NO_LIBCRYPTO=1` forces the md-5 crate.

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(libcrypto_md5)");
    println!("cargo:rerun-if-env-changed=PGMAINT_NO_LIBCRYPTO");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if std::env::var_os("PGMAINT_NO_LIBCRYPTO").is_some() {
        return;
    }
    let pkg = |args: &[&str]| {
        Command::new("pkg-config")
            .args(args)
            .arg("libcrypto")
            .output()
            .ok()
    };
    // OpenSSL 1.1 or newer: EVP_MD_CTX_new and friends.
    let Some(out) = pkg(&["--atleast-version=1.1.0"]) else {
        return;
    };
    if !out.status.success() {
        return;
    }
    if let Some(out) = pkg(&["--libs-only-L"]) {
        for dir in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(dir) = dir.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
    }
    println!("cargo:rustc-link-lib=crypto");
    println!("cargo:rustc-cfg=libcrypto_md5");
}
