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
use crate::train::optimizer::{AdamState, AdamW};
use crate::train::progress::{format_metric_line, print_line};
use crate::train::rng::{Rng, Stream};
use crate::train::stop::StopFlag;

/// Items evaluated together.
const EVAL_BATCH: usize = 8;

/// One epoch's numbers, as logged and kept in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EpochMetrics {
    /// 1-based.
    pub(crate) epoch: usize,
    /// Mean loss over the epoch's training pixels.
    pub(crate) train_loss: f64,
    /// Training pixels labelled right while training.
    pub(crate) train_pixel_accuracy: f64,
    /// Training mean IoU while training.
    pub(crate) train_mean_iou: f64,
    /// Validation loss.
    pub(crate) val_loss: Option<f64>,
    /// Validation pixel accuracy.
    pub(crate) val_pixel_accuracy: Option<f64>,
    /// Validation mean IoU.
    pub(crate) val_mean_iou: Option<f64>,
    /// Wall time of the epoch.
    pub(crate) seconds: f64,
}

impl EpochMetrics {
    /// The metric line (`wick train`'s format, see [`format_metric_line`]).
    pub(crate) fn line(&self) -> String {
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
pub(crate) struct Best {
    /// Its epoch.
    pub(crate) epoch: usize,
    /// Its validation scores (absent without validation: the last epoch is the best).
    pub(crate) val: Option<Scores>,
    /// Its tensors by checkpoint key.
    pub(crate) tensors: HashMap<String, Tensor>,
}

/// The training state after a completed epoch.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// Epochs completed.
    pub(crate) epochs_done: usize,
    /// The trained decoder tensors, by key.
    pub(crate) tensors: HashMap<String, Tensor>,
    /// AdamW's state, its moments in the decoder's variable order.
    pub(crate) optimizer: AdamState,
    /// The best decoder so far.
    pub(crate) best: Option<Best>,
    /// Epochs since the best.
    pub(crate) bad_epochs: usize,
    /// Whether early stopping ended the run.
    pub(crate) stopped_early: bool,
    /// Every completed epoch.
    pub(crate) history: Vec<EpochMetrics>,
}

/// What the loop needs.
pub(crate) struct Fit<'a> {
    /// The decoder being trained.
    pub(crate) decoder: &'a TrainableDecoder,
    /// Training items.
    pub(crate) train: &'a FeatureCache,
    /// Validation items.
    pub(crate) val: Option<&'a FeatureCache>,
    /// Training resolution `(h, w)`.
    pub(crate) size: (usize, usize),
    /// Classes of the metrics (2 for a binary model).
    pub(crate) classes: usize,
    /// Epoch limit.
    pub(crate) epochs: usize,
    /// Items per step.
    pub(crate) batch_size: usize,
    /// Epochs without a better validation mean IoU before stopping; 0 = off.
    pub(crate) patience: usize,
    /// Seed of the shuffles.
    pub(crate) seed: u64,
    /// AdamW settings.
    pub(crate) adam: ParamsAdamW,
    /// The stop request.
    pub(crate) stop: &'a StopFlag,
    /// The state to continue from (a resumed job).
    pub(crate) resume: Option<&'a State>,
    /// Called with the state after every completed epoch (the checkpoint).
    pub(crate) checkpoint: &'a dyn Fn(&State) -> Result<()>,
}

/// How the loop ended.
pub(crate) struct Fitted {
    /// Every completed epoch.
    pub(crate) history: Vec<EpochMetrics>,
    /// The best decoder.
    pub(crate) best: Option<Best>,
    /// Whether early stopping ended it.
    pub(crate) stopped_early: bool,
    /// Whether a stop request ended it.
    pub(crate) stopped: bool,
}

/// Loss, confusion matrix of the decoder on `items` of `cache`, without gradients.
pub(crate) fn evaluate(
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

/// The loop's state between epochs: what it returns, the optimizer and the epochs since the
/// best decoder.
struct Running {
    out: Fitted,
    optimizer: AdamW,
    bad_epochs: usize,
}

/// Runs epochs until done, early stopping or a stop request.
pub(crate) fn fit(ctx: &Fit<'_>) -> Result<Fitted> {
    let mut run = Running {
        out: Fitted {
            history: Vec::new(),
            best: None,
            stopped_early: false,
            stopped: false,
        },
        optimizer: AdamW::new(ctx.decoder.vars(), ctx.adam.clone())?,
        bad_epochs: 0,
    };
    let mut first = 1;
    if let Some(state) = ctx.resume {
        ctx.decoder.load(&state.tensors)?;
        run.optimizer.restore(&state.optimizer)?;
        run.out.history.clone_from(&state.history);
        run.out.best.clone_from(&state.best);
        run.out.stopped_early = state.stopped_early;
        run.bad_epochs = state.bad_epochs;
        first = state.epochs_done + 1;
        if state.stopped_early {
            return Ok(run.out);
        }
    }
    for epoch in first..=ctx.epochs {
        let started = Instant::now();
        let Some((train_loss, train_scores)) = train_epoch(ctx, &mut run.optimizer, epoch)? else {
            run.out.stopped = true;
            return Ok(run.out);
        };
        let val = match ctx.val {
            Some(cache) if cache.len > 0 => {
                let (l, c, _) = evaluate(ctx.decoder, cache, ctx.size, ctx.classes)?;
                Some((l, c.scores()))
            }
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss,
            train_pixel_accuracy: train_scores.pixel_accuracy,
            train_mean_iou: train_scores.mean_iou,
            val_loss: val.as_ref().map(|v| v.0),
            val_pixel_accuracy: val.as_ref().map(|v| v.1.pixel_accuracy),
            val_mean_iou: val.as_ref().map(|v| v.1.mean_iou),
            seconds: started.elapsed().as_secs_f64(),
        };
        print_line(&metrics.line());
        record_epoch(ctx, &mut run, metrics, val.map(|v| v.1))?;
        if run.out.stopped_early {
            tracing::info!(
                epoch,
                patience = ctx.patience,
                best_epoch = run.out.best.as_ref().map(|b| b.epoch),
                "early stopping: the validation mean IoU has not improved for `patience` epochs"
            );
            break;
        }
        if ctx.stop.is_set() {
            run.out.stopped = true;
            break;
        }
    }
    Ok(run.out)
}

/// One pass over the training items in the epoch's seeded order: the mean loss per valid
/// pixel and the scores while training. `None` when a stop was requested (the partial epoch
/// is dropped: the checkpoint keeps the last completed one).
fn train_epoch(
    ctx: &Fit<'_>,
    optimizer: &mut AdamW,
    epoch: usize,
) -> Result<Option<(f64, Scores)>> {
    let pixels = ctx.size.0 * ctx.size.1;
    let mut order: Vec<usize> = (0..ctx.train.len).collect();
    Rng::for_stream(ctx.seed, Stream::Shuffle, &[epoch as u64]).shuffle(&mut order);
    let mut confusion = Confusion::new(ctx.classes);
    let (mut loss_sum, mut valid) = (0.0, 0usize);
    for items in order.chunks(ctx.batch_size) {
        if ctx.stop.is_set() {
            return Ok(None);
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
    Ok(Some((loss_sum / valid.max(1) as f64, confusion.scores())))
}

/// Records a completed epoch: the best decoder (highest validation mean IoU; the last one
/// without validation), early stopping, the history, and the checkpoint.
fn record_epoch(
    ctx: &Fit<'_>,
    run: &mut Running,
    metrics: EpochMetrics,
    val: Option<Scores>,
) -> Result<()> {
    let epoch = metrics.epoch;
    let out = &mut run.out;
    let improved = match (&out.best, &val) {
        (None, _) | (_, None) => true,
        (Some(best), Some(scores)) => best
            .val
            .as_ref()
            .is_none_or(|b| scores.mean_iou > b.mean_iou),
    };
    if improved {
        out.best = Some(Best {
            epoch,
            val,
            tensors: ctx.decoder.tensors()?,
        });
        run.bad_epochs = 0;
    } else {
        run.bad_epochs += 1;
    }
    out.history.push(metrics);
    out.stopped_early = ctx.patience > 0 && run.bad_epochs >= ctx.patience;
    let trained = ctx.decoder.var_keys();
    let mut tensors = ctx.decoder.tensors()?;
    tensors.retain(|k, _| trained.contains(k));
    (ctx.checkpoint)(&State {
        epochs_done: epoch,
        tensors,
        optimizer: run.optimizer.state()?,
        best: out.best.clone(),
        bad_epochs: run.bad_epochs,
        stopped_early: out.stopped_early,
        history: out.history.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_line_is_stable() {
        let mut m = EpochMetrics {
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
