//! A real S3 server on loopback for the container test: s3s-fs serving a directory (bucket =
//! first-level folder, key = path below it), checking SigV4 signatures for one key pair. Prints
//! its endpoint URL on stdout, then serves until it is killed.
//!
//! ```sh
//! cargo run --example s3_server -- ROOT_DIR ACCESS_KEY_ID SECRET_ACCESS_KEY
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: s3_server ROOT_DIR ACCESS_KEY_ID SECRET_ACCESS_KEY";
    let root = PathBuf::from(args.next().context(usage)?);
    let access_key = args.next().context(usage)?;
    let secret_key = args.next().context(usage)?;
    let mut builder = S3ServiceBuilder::new(
        s3s_fs::FileSystem::new(&root).map_err(|e| anyhow::anyhow!("s3s-fs on {root:?}: {e:?}"))?,
    );
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            // A connection that fails mid-request only ends that connection.
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
