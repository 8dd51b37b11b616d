//! Generated gRPC code (see `proto/`).

pub mod istio {
    tonic::include_proto!("istio.v1.auth");
}

pub mod hawser {
    tonic::include_proto!("hawser.v1");
}
