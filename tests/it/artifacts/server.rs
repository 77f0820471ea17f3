//! A real S3 server for the tests: s3s-fs in-process on 127.0.0.1 (it verifies SigV4
//! signatures), directory-backed so a test can seed `ROOT/<bucket>/<key>` with plain files; and
//! a TCP proxy that cuts responses short, to exercise resumed downloads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wick::artifacts::{FetchOptions, S3Overrides, StaticCredentials};

pub(crate) const ACCESS_KEY: &str = "test";
pub(crate) const SECRET_KEY: &str = "testtest1234";

/// One server per test (on the test's runtime: it stops with the test), its files in a
/// temporary directory.
pub(crate) struct S3Server {
    pub(crate) addr: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    pub(crate) async fn start() -> Result<Self> {
        let root = tempfile::tempdir()?;
        let mut builder = S3ServiceBuilder::new(
            s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?,
        );
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(S3Server { addr, root })
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (a directory for s3s-fs).
    pub(crate) fn bucket(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Writes an object straight into the server's storage.
    pub(crate) fn seed(&self, bucket: &str, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.path().join(bucket).join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// The server's storage directory.
    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// Fetch options that reach this server with the right keys, scratch under `scratch`.
    pub(crate) fn options(&self, scratch: &Path) -> FetchOptions {
        options_for(&self.endpoint(), SECRET_KEY, scratch)
    }
}

/// Fetch options for `endpoint` with the test access key and `secret`.
pub(crate) fn options_for(endpoint: &str, secret: &str, scratch: &Path) -> FetchOptions {
    FetchOptions {
        scratch_parent: Some(scratch.to_owned()),
        s3: S3Overrides {
            endpoint_url: Some(endpoint.to_owned()),
            region: Some("us-east-1".into()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: secret.into(),
            }),
            force_path_style: None,
        },
        ..FetchOptions::default()
    }
}

/// The environment for a `wick` child process to reach `server` through the standard AWS
/// variables only (no instance metadata; the caller points `HOME` away from `~/.aws`).
pub(crate) fn aws_env(server: &S3Server, with_keys: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_ENDPOINT_URL_S3", server.endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    if with_keys {
        env.push(("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()));
        env.push(("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()));
    }
    env
}

/// A proxy to `upstream` whose first `faulty` connections are cut once `cut_after` response
/// bytes have gone through: the client sees a body that breaks mid-way.
pub(crate) async fn cutting_proxy(
    upstream: SocketAddr,
    cut_after: u64,
    faulty: usize,
) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let limit = (count.fetch_add(1, Ordering::SeqCst) < faulty).then_some(cut_after);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upload = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut sent = 0u64;
                let mut buffer = vec![0u8; 64 << 10];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    let n = match limit {
                        Some(limit) if sent + n as u64 >= limit => (limit - sent) as usize,
                        _ => n,
                    };
                    if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                }
                upload.abort();
            });
        }
    });
    Ok(format!("http://{addr}"))
}

/// Deterministic incompressible bytes (xorshift), so a corrupted or misplaced part shows.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
