//! The classification epoch loop: train the head, evaluate, print the metric line, checkpoint, and stop on
//! early stopping, at the epoch limit or on SIGTERM. With `augment=true` each epoch first
//! recomputes the training features through random crops and flips.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::backbone::Backbone;
use super::features::{extract, FeatureTable, Pass, Transform};
use super::head::{evaluate, EpochMetrics, Objective, Split, TrainState};
use super::resume;
use crate::train::checkpoint::{Checkpoints, JobKey};
use crate::train::hyperparams::Hyperparameters;
use crate::train::progress::{format_metric_line, print_line};
use crate::train::stop::StopFlag;

/// What the loop needs, borrowed from the job.
pub(crate) struct Fit<'a> {
    /// The hyperparameters.
    pub(crate) hp: &'a Hyperparameters,
    /// For `augment=true`.
    pub(crate) backbone: &'a Backbone,
    /// Training features (evaluation transform) and classes.
    pub(crate) train: &'a Split,
    /// Validation features and classes, if any.
    pub(crate) val: Option<&'a Split>,
    /// The loss.
    pub(crate) objective: &'a Objective,
    /// For `augment=true`: the training image files and which of them are readable.
    pub(crate) train_paths: &'a [&'a Path],
    /// See [`Fit::train_paths`].
    pub(crate) train_readable: &'a [bool],
    /// Where the state goes after each epoch.
    pub(crate) checkpoints: &'a Checkpoints,
    /// The checkpoint key.
    pub(crate) key: &'a JobKey,
    /// The stop request.
    pub(crate) stop: &'a StopFlag,
}

/// Runs epochs until done; returns `false` if a stop request ended the loop.
pub(crate) fn fit(ctx: &Fit<'_>, state: &mut TrainState) -> Result<bool> {
    let hp = ctx.hp;
    if hp.augment && state.epochs_done < hp.epochs && !state.stopped_early {
        tracing::info!(
            "augment=true: the training images go through the backbone again every epoch \
             (random crops and flips), so an epoch takes a backbone pass instead of milliseconds"
        );
    }
    while state.epochs_done < hp.epochs && !state.stopped_early {
        let epoch = state.epochs_done + 1;
        let started = Instant::now();
        let augmented;
        let train = if hp.augment {
            match augmented_split(ctx, epoch)? {
                Some(split) => {
                    augmented = split;
                    &augmented
                }
                None => return Ok(false),
            }
        } else {
            ctx.train
        };
        let Some((train_loss, train_accuracy)) =
            state.train_epoch(train, ctx.objective, hp, ctx.stop)?
        else {
            return Ok(false);
        };
        let eval = match ctx.val {
            Some(val) if !val.is_empty() => Some(evaluate(&state.head()?, val)?),
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss,
            train_accuracy,
            val_loss: eval.as_ref().map(|e| e.loss),
            val_accuracy: eval.as_ref().map(|e| e.accuracy),
            seconds: started.elapsed().as_secs_f64(),
        };
        print_metric_line(&metrics);
        let goes_on = state.finish_epoch(metrics, hp.patience)?;
        resume::save_state(ctx.checkpoints, ctx.key, &state.to_parts()?)?;
        if !goes_on {
            tracing::info!(
                epoch,
                patience = hp.patience,
                best_epoch = state.best.as_ref().map(|b| b.epoch),
                "early stopping: the validation loss has not improved for `patience` epochs"
            );
        }
        if ctx.stop.is_set() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The training features of `epoch` through random crops and flips; `None` on a stop.
fn augmented_split(ctx: &Fit<'_>, epoch: usize) -> Result<Option<Split>> {
    let n = ctx.train_paths.len();
    let mut table = FeatureTable::new(n, ctx.backbone.num_features());
    let pass = Pass {
        label: "augmented features",
        paths: ctx.train_paths,
        transform: Transform::Augment {
            seed: ctx.hp.seed,
            epoch,
        },
        skip: Some(ctx.train_readable),
    };
    // Augmented features are not checkpointed: a stop drops the epoch, and a resumed job
    // recomputes exactly these crops from the seed.
    let (complete, _) = extract(ctx.backbone, &pass, &mut table, ctx.stop, &mut |_| Ok(()))?;
    if !complete {
        return Ok(None);
    }
    // Same rows in the same order as the cached split: the readable training images.
    table.readable = ctx.train_readable.to_vec();
    let (x, _) = table.gather(0..n)?;
    Ok(Some(Split {
        x,
        y: ctx.train.y.clone(),
    }))
}

/// The per-epoch line SageMaker's `MetricDefinitions` regexes read (README "Training"):
/// stdout, flushed, `key=value;` pairs in a fixed order, four decimals.
pub(crate) fn metric_line(m: &EpochMetrics) -> String {
    let mut pairs = vec![
        ("train_loss", m.train_loss),
        ("train_accuracy", m.train_accuracy),
    ];
    if let (Some(loss), Some(accuracy)) = (m.val_loss, m.val_accuracy) {
        pairs.extend([("val_loss", loss), ("val_accuracy", accuracy)]);
    }
    format_metric_line(m.epoch, &pairs)
}

fn print_metric_line(m: &EpochMetrics) {
    print_line(&metric_line(m));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_line_is_stable() {
        let mut m = EpochMetrics {
            epoch: 3,
            train_loss: 0.12344,
            train_accuracy: 0.95,
            val_loss: Some(0.23456),
            val_accuracy: Some(0.91),
            seconds: 0.5,
        };
        assert_eq!(
            metric_line(&m),
            "epoch=3; train_loss=0.1234; train_accuracy=0.9500; val_loss=0.2346; val_accuracy=0.9100;"
        );
        m.val_loss = None;
        m.val_accuracy = None;
        assert_eq!(
            metric_line(&m),
            "epoch=3; train_loss=0.1234; train_accuracy=0.9500;"
        );
    }
}
