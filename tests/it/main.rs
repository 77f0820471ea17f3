//! The single integration-test binary: one link step for the whole suite.

mod artifacts;
mod detection;
mod http;
mod openapi;
mod parity;
mod readme_settings;
mod real_model;
mod robustness;
mod seg_dataset;
mod seg_train;
mod seg_train_decoder;
mod seg_train_jobs;
mod seg_train_resume;
mod segmentation;
mod segmentation_pipeline;
mod serve_clients;
mod serve_process;
mod serve_router;
mod serve_tasks;
mod support;
mod train;
mod train_resume;
mod ui;
