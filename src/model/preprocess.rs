//! Image decoding and the timm / torchvision evaluation transform.
