//! Broken and hostile clients over raw TCP, and a hung inference worker: each gets the right
//! status (or a closed connection) and none can hold the server up.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::http::{request, Connection, Reply};
use crate::serve_process::ready_server;
use crate::support::fixture;

const POST_HEAD: &str =
    "POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n";

fn assert_json_error(reply: &Reply, status: u16, error_type: &str) -> Result<()> {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json()?;
    assert_eq!(body["error_type"], error_type, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    Ok(())
}

#[test]
fn broken_bodies_are_the_clients_fault_and_stalls_time_out() -> Result<()> {
    let server = ready_server(&[("WICK_BODY_READ_TIMEOUT_SECS", "1")])?;
    let chunked = format!("{POST_HEAD}Transfer-Encoding: chunked\r\n\r\n");
    for (what, body) in [
        ("a non-hex chunk size", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "an oversized chunk size",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a chunk longer than its size",
            "5\r\nhello, world\r\n0\r\n\r\n",
        ),
    ] {
        let mut connection = Connection::open(server.addr)?;
        connection.write_raw(format!("{chunked}{body}").as_bytes())?;
        let reply = connection.read_reply()?;
        assert_json_error(&reply, 400, "malformed_body").map_err(|e| e.context(what))?;
    }

    // A body cut short before its Content-Length (the client closes its sending side).
    let mut connection = Connection::open(server.addr)?;
    connection.write_raw(format!("{POST_HEAD}Content-Length: 1000\r\n\r\n").as_bytes())?;
    connection.write_raw(&[0u8; 100])?;
    connection.finish_sending()?;
    assert_json_error(&connection.read_reply()?, 400, "malformed_body")?;

    // A body that stops arriving: 408 after the body timeout, not the 60 s request timeout.
    let mut connection = Connection::open(server.addr)?;
    connection.write_raw(format!("{POST_HEAD}Content-Length: 1000\r\n\r\n").as_bytes())?;
    connection.write_raw(&[0u8; 100])?;
    let started = Instant::now();
    assert_json_error(&connection.read_reply()?, 408, "body_timeout")?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The client's faults are logged at info, never as errors of the server. The last line
    // can reach the log reader a moment after the client has its answer: wait for it.
    let is_status = |line: &String| line.contains("\"invocation\"") && line.contains("\"INFO\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = server.log_lines();
    while log.iter().filter(|line| is_status(line)).count() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log = server.log_lines();
    }
    let errors: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("\"ERROR\""))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let statuses = log.iter().filter(|line| is_status(line)).count();
    assert_eq!(statuses, 5, "one info line per request: {log:?}");
    assert_eq!(request(server.addr, "GET", "/ping", &[], b"")?.status, 200);
    Ok(())
}

#[test]
fn oversized_headers_get_431_and_half_sent_headers_do_not_hold_the_server() -> Result<()> {
    let mut server = ready_server(&[("WICK_HEADER_READ_TIMEOUT_SECS", "2")])?;
    // One 200 KB header line: hyper answers 431 itself, with an empty body, and closes.
    let mut connection = Connection::open(server.addr)?;
    let huge = "a".repeat(200 * 1024);
    connection
        .write_raw(format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n").as_bytes())?;
    let reply = connection.read_reply()?;
    assert_eq!(reply.status, 431);
    assert!(reply.body.is_empty(), "{:?}", reply.body);

    // Half a request's headers, then silence: the connection is closed after the header
    // timeout instead of being held forever.
    let mut stalled = Connection::open(server.addr)?;
    stalled.write_raw(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")?;
    let started = Instant::now();
    assert!(
        stalled.is_closed_within(Duration::from_secs(6))?,
        "still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // SIGTERM with one client stuck in its headers and one stuck in its body: the server
    // does not wait for either (the grace period is 25 s).
    let mut in_headers = Connection::open(server.addr)?;
    in_headers.write_raw(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")?;
    let mut in_body = Connection::open(server.addr)?;
    in_body.write_raw(format!("{POST_HEAD}Content-Length: 1000\r\n\r\nabc").as_bytes())?;
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal("TERM")?;
    // The request whose body never arrived is told the server is going away.
    assert_json_error(&in_body.read_reply()?, 503, "shutting_down")?;
    let status = server.wait_exit(Duration::from_secs(20))?;
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        signalled.elapsed()
    );
    Ok(())
}

#[test]
fn a_worker_stuck_for_twice_the_timeout_turns_ping_503_until_it_finishes() -> Result<()> {
    // Every forward pass sleeps 5 s; requests time out after 1 s; a batch running longer than
    // 2 s (twice the timeout) marks the worker stuck.
    let server = ready_server(&[
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1"),
        ("WICK_FAULT_INFERENCE_DELAY_MS", "5000"),
    ])?;
    let addr = server.addr;
    let jpg = std::fs::read(fixture("chelsea.jpg"))?;
    let started = Instant::now();
    let reply = request(
        addr,
        "POST",
        "/invocations",
        &[("Content-Type", "image/jpeg")],
        &jpg,
    )?;
    assert_json_error(&reply, 504, "timeout")?;
    // Still healthy until the batch has run for twice the timeout...
    assert_eq!(request(addr, "GET", "/ping", &[], b"")?.status, 200);
    let mut unhealthy_at = None;
    let mut recovered_at = None;
    while started.elapsed() < Duration::from_secs(12) && recovered_at.is_none() {
        let ping = request(addr, "GET", "/ping", &[], b"")?;
        match (ping.status, unhealthy_at) {
            (503, _) => {
                assert_json_error(&ping, 503, "unhealthy")?;
                unhealthy_at.get_or_insert(started.elapsed());
            }
            (200, Some(_)) => recovered_at = Some(started.elapsed()),
            (200, None) => {}
            (other, _) => panic!("/ping answered {other}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...then 503 (SageMaker replaces the instance)...
    let unhealthy_at = unhealthy_at.expect("/ping never turned 503");
    assert!(
        unhealthy_at >= Duration::from_secs(2) && unhealthy_at < Duration::from_secs(4),
        "503 from {unhealthy_at:?}"
    );
    // ...and 200 again once the batch finishes, as the README says.
    let recovered_at = recovered_at.expect("/ping never recovered");
    assert!(
        recovered_at >= Duration::from_secs(5) && recovered_at < Duration::from_secs(8),
        "200 again at {recovered_at:?}"
    );
    Ok(())
}
