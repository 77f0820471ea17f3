//! The classification head: a linear layer trained with AdamW on cached backbone features. One epoch, the
//! loss, evaluation, and the bookkeeping between epochs (best head, early stopping).
//!
//! Everything random comes from the job's seed (the initial weights; each epoch's order is a
//! function of seed and epoch), and the state between epochs is exactly what the checkpoint
//! holds, so a resumed job ends where an uninterrupted one ends.

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::optim::{Optimizer, ParamsAdamW};
use serde::{Deserialize, Serialize};

use super::backbone::HeadTensors;
use crate::train::hyperparams::{ClassWeights, Hyperparameters};
use crate::train::optimizer::{AdamState, AdamW};
use crate::train::rng::{Rng, Stream};
use crate::train::stop::StopFlag;

/// Features and classes of one split.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// `(n, features)`.
    pub(crate) x: Tensor,
    /// Class of each row.
    pub(crate) y: Vec<u32>,
}

impl Split {
    /// Number of images.
    pub(crate) fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether the split has no images.
    pub(crate) fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// What the optimizer minimises: cross-entropy with label smoothing and class weights.
#[derive(Debug, Clone)]
pub(crate) struct Objective {
    /// Loss weight of each class.
    pub(crate) class_weights: Vec<f32>,
    /// Label smoothing in `[0, 1)`.
    pub(crate) label_smoothing: f64,
}

/// One epoch's numbers, as logged and kept in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EpochMetrics {
    /// 1-based.
    pub(crate) epoch: usize,
    /// Mean training objective over the epoch's batches.
    pub(crate) train_loss: f64,
    /// Share of training images classified right while training.
    pub(crate) train_accuracy: f64,
    /// Plain cross-entropy on the validation images (no smoothing, no class weights).
    pub(crate) val_loss: Option<f64>,
    /// Share of validation images classified right.
    pub(crate) val_accuracy: Option<f64>,
    /// Wall time of the epoch, backbone pass included with `augment=true`.
    pub(crate) seconds: f64,
}

/// The head's numbers on one split.
#[derive(Debug, Clone)]
pub(crate) struct Evaluation {
    /// Plain cross-entropy.
    pub(crate) loss: f64,
    /// Share classified right.
    pub(crate) accuracy: f64,
    /// Predicted class of each image.
    pub(crate) predicted: Vec<u32>,
}

/// The best head so far.
#[derive(Debug, Clone)]
pub(crate) struct Best {
    /// The epoch that produced it.
    pub(crate) epoch: usize,
    /// Its validation loss (absent without validation images: the last epoch is the best).
    pub(crate) val_loss: Option<f64>,
    /// The head.
    pub(crate) head: HeadTensors,
}

/// Everything that carries over from one epoch to the next.
pub(crate) struct TrainState {
    weight: Var,
    bias: Var,
    optimizer: AdamW,
    /// Completed epochs.
    pub(crate) epochs_done: usize,
    /// The head to export.
    pub(crate) best: Option<Best>,
    /// Epochs since the validation loss last improved.
    pub(crate) bad_epochs: usize,
    /// Every completed epoch.
    pub(crate) history: Vec<EpochMetrics>,
    /// Whether early stopping ended training.
    pub(crate) stopped_early: bool,
}

/// The saved form of [`TrainState`] (see `resume.rs`).
pub(crate) struct StateParts {
    /// Current head.
    pub(crate) head: HeadTensors,
    /// Optimizer state, moments ordered `[weight, bias]`.
    pub(crate) optimizer: AdamState,
    /// See [`TrainState`].
    pub(crate) epochs_done: usize,
    /// See [`TrainState`].
    pub(crate) best: Option<Best>,
    /// See [`TrainState`].
    pub(crate) bad_epochs: usize,
    /// See [`TrainState`].
    pub(crate) history: Vec<EpochMetrics>,
    /// See [`TrainState`].
    pub(crate) stopped_early: bool,
}

fn adam_params(hp: &Hyperparameters) -> ParamsAdamW {
    ParamsAdamW {
        lr: hp.lr,
        weight_decay: hp.weight_decay,
        ..ParamsAdamW::default()
    }
}

impl TrainState {
    /// A fresh head, initialised as PyTorch's `nn.Linear` (uniform in ±1/sqrt(features)) from
    /// the seed.
    pub(crate) fn new(
        classes: usize,
        features: usize,
        hp: &Hyperparameters,
    ) -> candle_core::Result<Self> {
        let bound = 1.0 / (features as f64).sqrt();
        let mut rng = Rng::for_stream(hp.seed, Stream::Init, &[]);
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect() };
        let weight = Tensor::from_vec(
            uniform(classes * features),
            (classes, features),
            &Device::Cpu,
        )?;
        let bias = Tensor::from_vec(uniform(classes), classes, &Device::Cpu)?;
        Self::from_parts(
            StateParts {
                head: HeadTensors { weight, bias },
                optimizer: AdamState {
                    step: 0,
                    first_moments: Vec::new(),
                    second_moments: Vec::new(),
                },
                epochs_done: 0,
                best: None,
                bad_epochs: 0,
                history: Vec::new(),
                stopped_early: false,
            },
            hp,
        )
    }

    /// Rebuilds the state from its saved form.
    pub(crate) fn from_parts(parts: StateParts, hp: &Hyperparameters) -> candle_core::Result<Self> {
        let weight = Var::from_tensor(&parts.head.weight.to_dtype(DType::F32)?)?;
        let bias = Var::from_tensor(&parts.head.bias.to_dtype(DType::F32)?)?;
        let mut optimizer = AdamW::new(vec![weight.clone(), bias.clone()], adam_params(hp))?;
        if parts.optimizer.step > 0 {
            optimizer.restore(&parts.optimizer)?;
        }
        Ok(TrainState {
            weight,
            bias,
            optimizer,
            epochs_done: parts.epochs_done,
            best: parts.best,
            bad_epochs: parts.bad_epochs,
            history: parts.history,
            stopped_early: parts.stopped_early,
        })
    }

    /// The saved form of the state.
    pub(crate) fn to_parts(&self) -> candle_core::Result<StateParts> {
        Ok(StateParts {
            head: self.head()?,
            optimizer: self.optimizer.state()?,
            epochs_done: self.epochs_done,
            best: self.best.clone(),
            bad_epochs: self.bad_epochs,
            history: self.history.clone(),
            stopped_early: self.stopped_early,
        })
    }

    /// A copy of the current head.
    pub(crate) fn head(&self) -> candle_core::Result<HeadTensors> {
        Ok(HeadTensors {
            weight: self.weight.as_tensor().copy()?,
            bias: self.bias.as_tensor().copy()?,
        })
    }

    /// One pass over `train` in a seeded order. `None` when a stop was requested (the partial
    /// epoch is dropped: the caller keeps the state of the last completed epoch on disk).
    pub(crate) fn train_epoch(
        &mut self,
        train: &Split,
        objective: &Objective,
        hp: &Hyperparameters,
        stop: &StopFlag,
    ) -> candle_core::Result<Option<(f64, f64)>> {
        let epoch = self.epochs_done + 1;
        let mut order: Vec<u32> = (0..train.len() as u32).collect();
        Rng::for_stream(hp.seed, Stream::Shuffle, &[epoch as u64]).shuffle(&mut order);
        let classes = self.weight.dims()[0];
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for batch in order.chunks(hp.batch_size) {
            if stop.is_set() {
                return Ok(None);
            }
            let index = Tensor::new(batch, &Device::Cpu)?;
            let x = train.x.index_select(&index, 0)?;
            let targets: Vec<u32> = batch.iter().map(|&i| train.y[i as usize]).collect();
            let (q, w) = targets_and_weights(&targets, classes, objective)?;
            let logits = self.linear().forward(&x)?;
            let loss = cross_entropy(&logits, &q, &w)?;
            self.optimizer.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * batch.len() as f64;
            correct += count_correct(&logits, &targets)?;
        }
        let n = train.len().max(1) as f64;
        Ok(Some((loss_sum / n, correct as f64 / n)))
    }

    /// Records a completed epoch: history, best head, early stopping. Returns whether training
    /// goes on.
    pub(crate) fn finish_epoch(
        &mut self,
        metrics: EpochMetrics,
        patience: usize,
    ) -> candle_core::Result<bool> {
        self.epochs_done = metrics.epoch;
        let improved = match (&self.best, metrics.val_loss) {
            (_, None) | (None, _) => true,
            (Some(best), Some(loss)) => best.val_loss.is_none_or(|b| loss < b),
        };
        if improved {
            self.best = Some(Best {
                epoch: metrics.epoch,
                val_loss: metrics.val_loss,
                head: self.head()?,
            });
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.history.push(metrics);
        if patience > 0 && self.bad_epochs >= patience {
            self.stopped_early = true;
        }
        Ok(!self.stopped_early)
    }

    fn linear(&self) -> candle_nn::Linear {
        candle_nn::Linear::new(
            self.weight.as_tensor().clone(),
            Some(self.bias.as_tensor().clone()),
        )
    }
}

/// Plain cross-entropy, accuracy and predictions of `head` on `split`.
pub(crate) fn evaluate(head: &HeadTensors, split: &Split) -> candle_core::Result<Evaluation> {
    let classes = head.weight.dims()[0];
    let linear = candle_nn::Linear::new(head.weight.clone(), Some(head.bias.clone()));
    let logits = linear.forward(&split.x)?;
    let plain = Objective {
        class_weights: vec![1.0; classes],
        label_smoothing: 0.0,
    };
    let (q, w) = targets_and_weights(&split.y, classes, &plain)?;
    let loss = f64::from(cross_entropy(&logits, &q, &w)?.to_scalar::<f32>()?);
    let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = predicted
        .iter()
        .zip(&split.y)
        .filter(|(p, y)| p == y)
        .count();
    Ok(Evaluation {
        loss,
        accuracy: correct as f64 / split.len().max(1) as f64,
        predicted,
    })
}

/// Smoothed one-hot targets `(n, classes)` and per-image weights `(n)`.
fn targets_and_weights(
    targets: &[u32],
    classes: usize,
    objective: &Objective,
) -> candle_core::Result<(Tensor, Tensor)> {
    let off = (objective.label_smoothing / classes as f64) as f32;
    let on = (1.0 - objective.label_smoothing) as f32 + off;
    let mut q = vec![off; targets.len() * classes];
    for (row, &t) in targets.iter().enumerate() {
        q[row * classes + t as usize] = on;
    }
    let w: Vec<f32> = targets
        .iter()
        .map(|&t| objective.class_weights[t as usize])
        .collect();
    Ok((
        Tensor::from_vec(q, (targets.len(), classes), &Device::Cpu)?,
        Tensor::from_vec(w, targets.len(), &Device::Cpu)?,
    ))
}

/// `sum_i w_i * sum_c -q_ic * log_softmax(z_i)_c / sum_i w_i`.
///
/// log-softmax subtracts each row's maximum before exponentiating (candle-nn's
/// `ops::log_softmax`), so no logit overflows `exp` and no probability underflows to a
/// `log(0)`: the loss stays finite for logits of any size (`../shared/docs/candle-cpu.md`,
/// training).
pub(crate) fn cross_entropy(
    logits: &Tensor,
    q: &Tensor,
    w: &Tensor,
) -> candle_core::Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let per_image = (q * log_p)?.sum(D::Minus1)?.neg()?;
    (per_image * w)?.sum_all()?.broadcast_div(&w.sum_all()?)
}

fn count_correct(logits: &Tensor, targets: &[u32]) -> candle_core::Result<usize> {
    let predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(predicted
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count())
}

/// Per-class loss weights for `counts` training images per class.
pub(crate) fn class_weights(setting: &ClassWeights, counts: &[usize]) -> Result<Vec<f32>, String> {
    let classes = counts.len();
    match setting {
        ClassWeights::None => Ok(vec![1.0; classes]),
        ClassWeights::Balanced => {
            let n: usize = counts.iter().sum();
            Ok(counts
                .iter()
                .map(|&c| (n as f64 / (classes as f64 * c.max(1) as f64)) as f32)
                .collect())
        }
        ClassWeights::Explicit(w) if w.len() == classes => Ok(w.iter().map(|&x| x as f32).collect()),
        ClassWeights::Explicit(w) => Err(format!(
            "hyperparameter `class_weights`: expected one weight per class ({classes}, in label order) (given: {} weights)",
            w.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp() -> Hyperparameters {
        Hyperparameters {
            lr: 0.05,
            batch_size: 4,
            seed: 11,
            ..Hyperparameters::default()
        }
    }

    /// Two separable blobs in 3-D.
    fn blobs() -> candle_core::Result<Split> {
        let mut data = Vec::new();
        let mut y = Vec::new();
        for i in 0..20u32 {
            let c = i % 2;
            let s = if c == 0 { 1.0 } else { -1.0 };
            data.extend([s + 0.01 * i as f32, -s, 0.5]);
            y.push(c);
        }
        Ok(Split {
            x: Tensor::from_vec(data, (20, 3), &Device::Cpu)?,
            y,
        })
    }

    #[test]
    fn the_loss_is_finite_for_huge_logits_and_matches_the_formula() -> candle_core::Result<()> {
        let logits = Tensor::new(&[[1000f32, -1000.0, 0.0], [0.0, 0.0, 0.0]], &Device::Cpu)?;
        let objective = Objective {
            class_weights: vec![1.0, 3.0, 1.0],
            label_smoothing: 0.0,
        };
        let (q, w) = targets_and_weights(&[1, 1], 3, &objective)?;
        let loss = cross_entropy(&logits, &q, &w)?.to_scalar::<f32>()?;
        // Row 0: -log p_1 = 2000; row 1: ln 3. Equal weights (both class 1): the mean.
        let expected = (2000.0 + 3f32.ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-3, "{loss} vs {expected}");
        let smoothed = Objective {
            label_smoothing: 0.3,
            ..objective
        };
        let (q, w) = targets_and_weights(&[0, 2], 3, &smoothed)?;
        assert!(cross_entropy(&logits, &q, &w)?
            .to_scalar::<f32>()?
            .is_finite());
        Ok(())
    }

    #[test]
    fn training_separates_blobs_and_is_reproducible() -> candle_core::Result<()> {
        let split = blobs()?;
        let objective = Objective {
            class_weights: vec![1.0, 1.0],
            label_smoothing: 0.1,
        };
        let run = || -> candle_core::Result<(TrainState, Vec<f32>)> {
            let mut state = TrainState::new(2, 3, &hp())?;
            for epoch in 1..=10 {
                let (loss, acc) = state
                    .train_epoch(&split, &objective, &hp(), &StopFlag::default())?
                    .unwrap_or_default();
                let eval = evaluate(&state.head()?, &split)?;
                let metrics = EpochMetrics {
                    epoch,
                    train_loss: loss,
                    train_accuracy: acc,
                    val_loss: Some(eval.loss),
                    val_accuracy: Some(eval.accuracy),
                    seconds: 0.0,
                };
                state.finish_epoch(metrics, 0)?;
            }
            let w = state.head()?.weight.flatten_all()?.to_vec1::<f32>()?;
            Ok((state, w))
        };
        let (state, w1) = run()?;
        let (_, w2) = run()?;
        assert_eq!(w1, w2);
        let last = state.history.last().and_then(|m| m.val_accuracy);
        assert_eq!(last, Some(1.0));
        Ok(())
    }

    #[test]
    fn early_stopping_keeps_the_best_head() -> candle_core::Result<()> {
        let mut state = TrainState::new(2, 3, &hp())?;
        let metrics = |epoch, val_loss| EpochMetrics {
            epoch,
            train_loss: 0.0,
            train_accuracy: 0.0,
            val_loss: Some(val_loss),
            val_accuracy: Some(0.0),
            seconds: 0.0,
        };
        assert!(state.finish_epoch(metrics(1, 0.5), 2)?);
        assert!(state.finish_epoch(metrics(2, 0.4), 2)?);
        assert!(state.finish_epoch(metrics(3, 0.45), 2)?);
        assert!(!state.finish_epoch(metrics(4, 0.41), 2)?);
        assert_eq!(state.best.as_ref().map(|b| b.epoch), Some(2));
        assert!(state.stopped_early);
        Ok(())
    }

    #[test]
    fn class_weights_balanced_and_explicit() {
        assert_eq!(
            class_weights(&ClassWeights::Balanced, &[30, 10]),
            Ok(vec![40.0 / 60.0, 2.0])
        );
        assert_eq!(
            class_weights(&ClassWeights::Explicit(vec![1.0, 2.0]), &[3, 4]),
            Ok(vec![1.0, 2.0])
        );
        assert!(class_weights(&ClassWeights::Explicit(vec![1.0]), &[3, 4]).is_err());
    }
}
