//! Compiles the server's copy of Triton's `grpc_service.proto` into a tonic client for the
//! gRPC load generator (protox: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../server/proto");
    let fds = protox::compile(["grpc_service.proto"], ["../server/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
