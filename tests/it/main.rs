//! The single integration-test binary: one link step for the whole suite.

mod parity;
mod real_model;
mod robustness;
mod support;
mod train;
mod train_resume;
