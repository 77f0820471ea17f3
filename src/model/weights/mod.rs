//! Checkpoint loading: safetensors and PyTorch state dicts, without executing pickle code.
