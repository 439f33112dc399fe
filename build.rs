//! Compiles the peer protocol. protoc comes from the `protoc-bin-vendored` crate, so a fresh
//! machine builds with nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tollgate/replication/v1/replication.proto";
    println!("cargo:rerun-if-changed={proto}");
    // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    tonic_prost_build::configure().compile_protos(&[proto], &["proto"])?;
    Ok(())
}
