//! AdamW whose state can be checkpointed. The update is candle-nn's `AdamW` operation for
//! operation (a test checks they agree exactly), but candle-nn keeps the moments and the step
//! count private, and a resumed job must continue with them to end where an uninterrupted one
//! ends.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::optim::{Optimizer, ParamsAdamW};

/// AdamW (Loshchilov & Hutter) over a fixed list of variables.
#[derive(Debug)]
pub(crate) struct AdamW {
    vars: Vec<Var>,
    first_moments: Vec<Var>,
    second_moments: Vec<Var>,
    step: usize,
    params: ParamsAdamW,
}

impl Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> candle_core::Result<Self> {
        let zeros = |v: &Var| Var::zeros(v.shape(), v.dtype(), v.device());
        Ok(AdamW {
            first_moments: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            second_moments: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            vars,
            step: 0,
            params,
        })
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let ParamsAdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let scale_m = 1f64 / (1f64 - beta1.powi(self.step as i32));
        let scale_v = 1f64 / (1f64 - beta2.powi(self.step as i32));
        for ((theta, m), v) in self
            .vars
            .iter()
            .zip(&self.first_moments)
            .zip(&self.second_moments)
        {
            let Some(g) = grads.get(theta) else {
                continue;
            };
            let next_m = ((m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let next_v = ((v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (theta.as_tensor() * (1f64 - lr * weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let next_theta = (next_theta - (adjusted * lr)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
            theta.set(&next_theta)?;
        }
        Ok(())
    }
}

/// The optimizer's state: steps taken and both moments of every variable, in variable order.
#[derive(Debug, Clone)]
pub(crate) struct AdamState {
    /// Steps taken (bias correction depends on it).
    pub(crate) step: usize,
    /// First moments.
    pub(crate) first_moments: Vec<Tensor>,
    /// Second moments.
    pub(crate) second_moments: Vec<Tensor>,
}

impl AdamW {
    /// A copy of the state.
    pub(crate) fn state(&self) -> candle_core::Result<AdamState> {
        let copy = |vars: &[Var]| {
            vars.iter()
                .map(|v| v.as_tensor().copy())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        Ok(AdamState {
            step: self.step,
            first_moments: copy(&self.first_moments)?,
            second_moments: copy(&self.second_moments)?,
        })
    }

    /// Continues from a saved state (moments must match the variables' shapes).
    pub(crate) fn restore(&mut self, state: &AdamState) -> candle_core::Result<()> {
        if state.first_moments.len() != self.vars.len()
            || state.second_moments.len() != self.vars.len()
        {
            candle_core::bail!(
                "optimizer state has {} moments for {} variables",
                state.first_moments.len(),
                self.vars.len()
            );
        }
        for (var, saved) in self.first_moments.iter().zip(&state.first_moments) {
            var.set(saved)?;
        }
        for (var, saved) in self.second_moments.iter().zip(&state.second_moments) {
            var.set(saved)?;
        }
        self.step = state.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Same trajectory as candle-nn's AdamW, bit for bit, and a restored copy continues it.
    #[test]
    fn matches_candle_nn_and_resumes_exactly() -> candle_core::Result<()> {
        let start = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &Device::Cpu)?;
        let target = Tensor::new(&[[0.0f32, 1.0], [2.0, -1.0]], &Device::Cpu)?;
        let params = ParamsAdamW {
            lr: 0.1,
            weight_decay: 0.05,
            ..ParamsAdamW::default()
        };
        let ours = Var::from_tensor(&start)?;
        let theirs = Var::from_tensor(&start)?;
        let mut a = AdamW::new(vec![ours.clone()], params.clone())?;
        let mut b = candle_nn::AdamW::new(vec![theirs.clone()], params.clone())?;
        let loss = |v: &Var| (v.as_tensor() - &target)?.sqr()?.sum_all();
        for _ in 0..5 {
            a.backward_step(&loss(&ours)?)?;
            b.backward_step(&loss(&theirs)?)?;
        }
        assert_eq!(ours.to_vec2::<f32>()?, theirs.to_vec2::<f32>()?);

        let copy = Var::from_tensor(&ours.as_tensor().copy()?)?;
        let mut resumed = AdamW::new(vec![copy.clone()], params)?;
        resumed.restore(&a.state()?)?;
        for _ in 0..3 {
            a.backward_step(&loss(&ours)?)?;
            resumed.backward_step(&loss(&copy)?)?;
        }
        assert_eq!(ours.to_vec2::<f32>()?, copy.to_vec2::<f32>()?);
        Ok(())
    }
}
