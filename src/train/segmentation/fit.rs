//! The decoder's epoch loop on the cached features: seeded shuffles, AdamW steps, evaluation,
//! the metric line, best-decoder selection and early stopping on the validation mean IoU, a
//! stop request honoured between batches, and the state handed to the checkpoint after every
//! epoch (and taken back from it by a resumed job).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::optim::{Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::decoder::{predict, TrainableDecoder};
use super::features::FeatureCache;
use super::loss::{loss, targets, Confusion, Scores};
use super::resume::SegState;
use crate::train::fit::{format_metric_line, print_line};
use crate::train::optimizer::AdamW;
use crate::train::rng::{Rng, Stream};
use crate::train::stop::StopFlag;

/// Items evaluated together.
const EVAL_BATCH: usize = 8;

/// One epoch's numbers, as logged and kept in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean loss over the epoch's training pixels.
    pub train_loss: f64,
    /// Training pixels labelled right while training.
    pub train_pixel_accuracy: f64,
    /// Training mean IoU while training.
    pub train_mean_iou: f64,
    /// Validation loss.
    pub val_loss: Option<f64>,
    /// Validation pixel accuracy.
    pub val_pixel_accuracy: Option<f64>,
    /// Validation mean IoU.
    pub val_mean_iou: Option<f64>,
    /// Wall time of the epoch.
    pub seconds: f64,
}

impl SegEpoch {
    /// The metric line (`wick train`'s format, see [`format_metric_line`]).
    pub fn line(&self) -> String {
        let mut pairs = vec![
            ("train_loss", self.train_loss),
            ("train_pixel_accuracy", self.train_pixel_accuracy),
            ("train_mean_iou", self.train_mean_iou),
        ];
        if let (Some(l), Some(a), Some(m)) =
            (self.val_loss, self.val_pixel_accuracy, self.val_mean_iou)
        {
            pairs.extend([
                ("val_loss", l),
                ("val_pixel_accuracy", a),
                ("val_mean_iou", m),
            ]);
        }
        format_metric_line(self.epoch, &pairs)
    }
}

/// The best decoder so far.
#[derive(Debug, Clone)]
pub struct SegBest {
    /// Its epoch.
    pub epoch: usize,
    /// Its validation scores (absent without validation: the last epoch is the best).
    pub val: Option<Scores>,
    /// Its tensors by checkpoint key.
    pub tensors: HashMap<String, Tensor>,
}

/// What the loop needs.
pub struct SegFit<'a> {
    /// The decoder being trained.
    pub decoder: &'a TrainableDecoder,
    /// Training items.
    pub train: &'a FeatureCache,
    /// Validation items.
    pub val: Option<&'a FeatureCache>,
    /// Training resolution `(h, w)`.
    pub size: (usize, usize),
    /// Classes of the metrics (2 for a binary model).
    pub classes: usize,
    /// Epoch limit.
    pub epochs: usize,
    /// Items per step.
    pub batch_size: usize,
    /// Epochs without a better validation mean IoU before stopping; 0 = off.
    pub patience: usize,
    /// Seed of the shuffles.
    pub seed: u64,
    /// AdamW settings.
    pub adam: ParamsAdamW,
    /// The stop request.
    pub stop: &'a StopFlag,
    /// The state to continue from (a resumed job).
    pub resume: Option<&'a SegState>,
    /// Called with the state after every completed epoch (the checkpoint).
    pub checkpoint: &'a dyn Fn(&SegState) -> Result<()>,
}

/// How the loop ended.
pub struct SegOutcome {
    /// Every completed epoch.
    pub history: Vec<SegEpoch>,
    /// The best decoder.
    pub best: Option<SegBest>,
    /// Whether early stopping ended it.
    pub stopped_early: bool,
    /// Whether a stop request ended it.
    pub stopped: bool,
}

/// Loss, confusion matrix of the decoder on `items` of `cache`, without gradients.
pub fn evaluate(
    decoder: &TrainableDecoder,
    cache: &FeatureCache,
    size: (usize, usize),
    classes: usize,
) -> Result<(f64, Confusion, Vec<u8>)> {
    let pixels = size.0 * size.1;
    let mut confusion = Confusion::new(classes);
    let (mut loss_sum, mut valid) = (0.0, 0usize);
    let mut predicted_all = Vec::with_capacity(cache.len * pixels);
    let all: Vec<usize> = (0..cache.len).collect();
    for items in all.chunks(EVAL_BATCH) {
        let logits = decoder.forward(&cache.batch(items)?, size)?.detach();
        let truth = cache.targets(items, pixels);
        let t = targets(&truth, decoder.out_channels(), DType::F32)?;
        loss_sum += f64::from(loss(&logits, &t)?.to_scalar::<f32>()?) * t.valid as f64;
        valid += t.valid;
        let predicted = predict(&logits)?;
        confusion.add(&truth, &predicted);
        predicted_all.extend(predicted);
    }
    Ok((loss_sum / valid.max(1) as f64, confusion, predicted_all))
}

/// Runs epochs until done, early stopping or a stop request.
pub fn fit(ctx: &SegFit<'_>) -> Result<SegOutcome> {
    let mut optimizer = AdamW::new(ctx.decoder.vars(), ctx.adam.clone())?;
    let pixels = ctx.size.0 * ctx.size.1;
    let mut out = SegOutcome {
        history: Vec::new(),
        best: None,
        stopped_early: false,
        stopped: false,
    };
    let mut bad_epochs = 0;
    let mut first = 1;
    if let Some(state) = ctx.resume {
        ctx.decoder.load(&state.tensors)?;
        optimizer.restore(&state.optimizer)?;
        out.history.clone_from(&state.history);
        out.best.clone_from(&state.best);
        out.stopped_early = state.stopped_early;
        bad_epochs = state.bad_epochs;
        first = state.epochs_done + 1;
        if state.stopped_early {
            return Ok(out);
        }
    }
    for epoch in first..=ctx.epochs {
        let started = Instant::now();
        let mut order: Vec<usize> = (0..ctx.train.len).collect();
        Rng::for_stream(ctx.seed, Stream::Shuffle, &[epoch as u64]).shuffle(&mut order);
        let mut confusion = Confusion::new(ctx.classes);
        let (mut loss_sum, mut valid) = (0.0, 0usize);
        for items in order.chunks(ctx.batch_size) {
            if ctx.stop.is_set() {
                out.stopped = true;
                return Ok(out);
            }
            let truth = ctx.train.targets(items, pixels);
            let t = targets(&truth, ctx.decoder.out_channels(), DType::F32)?;
            let logits = ctx.decoder.forward(&ctx.train.batch(items)?, ctx.size)?;
            let batch_loss = loss(&logits, &t)?;
            optimizer.backward_step(&batch_loss)?;
            loss_sum += f64::from(batch_loss.to_scalar::<f32>()?) * t.valid as f64;
            valid += t.valid;
            confusion.add(&truth, &predict(&logits.detach())?);
        }
        let train_scores = confusion.scores();
        let val = match ctx.val {
            Some(cache) if cache.len > 0 => {
                let (l, c, _) = evaluate(ctx.decoder, cache, ctx.size, ctx.classes)?;
                Some((l, c.scores()))
            }
            _ => None,
        };
        let metrics = SegEpoch {
            epoch,
            train_loss: loss_sum / valid.max(1) as f64,
            train_pixel_accuracy: train_scores.pixel_accuracy,
            train_mean_iou: train_scores.mean_iou,
            val_loss: val.as_ref().map(|v| v.0),
            val_pixel_accuracy: val.as_ref().map(|v| v.1.pixel_accuracy),
            val_mean_iou: val.as_ref().map(|v| v.1.mean_iou),
            seconds: started.elapsed().as_secs_f64(),
        };
        print_line(&metrics.line());
        let improved = match (&out.best, &val) {
            (None, _) | (_, None) => true,
            (Some(best), Some((_, scores))) => best
                .val
                .as_ref()
                .is_none_or(|b| scores.mean_iou > b.mean_iou),
        };
        if improved {
            out.best = Some(SegBest {
                epoch,
                val: val.map(|v| v.1),
                tensors: ctx.decoder.tensors()?,
            });
            bad_epochs = 0;
        } else {
            bad_epochs += 1;
        }
        out.history.push(metrics);
        out.stopped_early = ctx.patience > 0 && bad_epochs >= ctx.patience;
        let trained = ctx.decoder.var_keys();
        let mut tensors = ctx.decoder.tensors()?;
        tensors.retain(|k, _| trained.contains(k));
        (ctx.checkpoint)(&SegState {
            epochs_done: epoch,
            tensors,
            optimizer: optimizer.state()?,
            best: out.best.clone(),
            bad_epochs,
            stopped_early: out.stopped_early,
            history: out.history.clone(),
        })?;
        if out.stopped_early {
            tracing::info!(
                epoch,
                patience = ctx.patience,
                best_epoch = out.best.as_ref().map(|b| b.epoch),
                "early stopping: the validation mean IoU has not improved for `patience` epochs"
            );
            break;
        }
        if ctx.stop.is_set() {
            out.stopped = true;
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_line_is_stable() {
        let mut m = SegEpoch {
            epoch: 2,
            train_loss: 0.5,
            train_pixel_accuracy: 0.9,
            train_mean_iou: 0.61234,
            val_loss: Some(0.25),
            val_pixel_accuracy: Some(0.95),
            val_mean_iou: Some(0.7),
            seconds: 1.0,
        };
        assert_eq!(
            m.line(),
            "epoch=2; train_loss=0.5000; train_pixel_accuracy=0.9000; train_mean_iou=0.6123; \
             val_loss=0.2500; val_pixel_accuracy=0.9500; val_mean_iou=0.7000;"
        );
        m.val_loss = None;
        assert_eq!(
            m.line(),
            "epoch=2; train_loss=0.5000; train_pixel_accuracy=0.9000; train_mean_iou=0.6123;"
        );
    }
}
