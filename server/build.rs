//! Compiles Triton's `grpc_service.proto` (a superset of KServe's `grpc_predict_v2.proto`,
//! same package and service) and Invariant's `advisory.proto` with protox, so no system
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["grpc_service.proto", "advisory.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
