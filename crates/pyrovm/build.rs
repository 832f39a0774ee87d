//! Compiles the protos with protox (pure Rust: no protoc needed):
//! - proto/tvm/v1/execution.proto into the tonic server and client, plus the
//!   descriptor set for reflection;
//! - proto/e2b/{process,filesystem}.proto (E2B envd's contract) into plain prost
//!   messages with proto3-JSON serde impls from pbjson, for the Connect adapter.

use std::path::{Path, PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script compiled in one checkout must
    // not point another checkout (a worktree sharing the target dir) at its files.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tvm(&root, &out)?;
    e2b(&root)?;
    Ok(())
}

fn tvm(root: &Path, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let file = root.join("tvm/v1/execution.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [root])?;
    std::fs::write(out.join("tvm_descriptor.bin"), fds.encode_to_vec())?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Writes `process.rs`, `filesystem.rs` (prost) and `process.serde.rs`,
/// `filesystem.serde.rs` (pbjson) into OUT_DIR.
fn e2b(root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let files = ["e2b/process.proto", "e2b/filesystem.proto"].map(|f| root.join(f));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut fds = protox::compile(&files, [root.join("e2b")])?;
    let descriptors = fds.encode_to_vec();
    // Only our packages: google.protobuf.Timestamp is our own type (see
    // src/api/e2b/pb.rs: pbjson-types' does not render the canonical JSON form).
    fds.file
        .retain(|f| matches!(f.package(), "process" | "filesystem"));
    tonic_build::configure()
        .build_server(false)
        .build_client(false)
        // Turns off the default ::prost_types mapping so ours can replace it.
        .compile_well_known_types(true)
        .extern_path(
            ".google.protobuf.Timestamp",
            "crate::api::e2b::pb::Timestamp",
        )
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .ignore_unknown_fields()
        .build(&[".process", ".filesystem"])?;
    Ok(())
}
