// Generates the rewind.v1 client, server and message types, plus the file descriptor set that
// gRPC server reflection serves. Needs `protoc` (Debian: protobuf-compiler; .ci/run installs it).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("rewind_v1_descriptor.bin"))
        .compile_protos(&["rewind/v1/jobs.proto"], &["."])?;
    println!("cargo:rerun-if-changed=rewind/v1/jobs.proto");
    Ok(())
}
