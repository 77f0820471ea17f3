//! The single integration-test binary: one link step for the whole suite.

mod artifacts;
mod http;
mod parity;
mod readme_settings;
mod real_model;
mod robustness;
mod serve_process;
mod serve_router;
mod support;
mod train;
mod train_resume;
