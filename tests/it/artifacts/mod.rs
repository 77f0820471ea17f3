//! Model artifacts against a real S3 server (s3s-fs in-process, SigV4 verified): layouts,
//! transfers, errors, hostile archives and `wick package`.

mod hostile;
mod package;
mod s3;
mod serve_uri;
mod server;
