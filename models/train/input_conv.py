"""A pretrained first convolution on another number of input channels than the spec's images: adapted on loading.

A backbone trained on gray images (Fashion-MNIST, 1 channel) fine-tuned on colour ones (CamVid, 3), or an ImageNet
file (3) fine-tuned on gray digits (1), differs from the network only in the input-channel axis of the
convolutions that read the image. The standard fix (timm's `adapt_input_conv`) is exact where the two kinds of
image agree, on a gray image replicated over the channels:

  1 → N   the kernel repeated over the N channels and divided by N: conv(W/N, [x]·N) = conv(W, x)
  N → 1   the kernel summed over its N channels:                     conv(ΣW, x) = conv(W, [x]·N)

Any other pair (3 → 4, 4 → 3) has no such reading and is refused: the caller names the spec's weights field.
Only the convolutions that read the network's input are adapted (found by running one image through the net),
never a later layer whose shape happens to differ.
"""
from __future__ import annotations

import torch
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight (out, in / groups, *kernel); transposed convs are (in, out, ...)


class ChannelsRefused(ValueError):
    """Input channels that no adaptation maps exactly; the message says what was asked and what is supported."""


def input_convs(net: nn.Module, channels: int, size: tuple[int, ...]) -> set[str]:
    """state_dict names of the `weight` of every convolution that reads the network's input unchanged."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    image = torch.zeros(1, channels, *size, device=device)  # (1, C, H, W)
    names = {module: name for name, module in net.named_modules() if isinstance(module, CONVS)}
    found: set[str] = set()

    def seen(module: nn.Module, inputs: tuple) -> None:
        if inputs and inputs[0] is image:
            found.add(f"{names[module]}.weight" if names[module] else "weight")

    hooks = [module.register_forward_pre_hook(seen) for module in names]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()  # batch norm on a single image must not fail, nor update its running statistics
            net(image)
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return found


def differs_in_channels(source: torch.Size, target: torch.Size) -> bool:
    """Same kernel, same outputs, another number of input channels."""
    return len(source) == len(target) >= 3 and source[0] == target[0] and source[2:] == target[2:] \
        and source[1] != target[1]


def adapt_input_conv(weight: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """(the kernel on `channels` input channels, what was done, in words). Raises ChannelsRefused."""
    have = weight.shape[1]
    kernel = weight.float()
    if have == channels:
        return weight, "unchanged"
    if have == 1:
        adapted = kernel.repeat(1, channels, *[1] * (weight.dim() - 2)) / channels  # (O, 1, k, k) → (O, C, k, k)
        how = (f"the 1-channel kernel repeated over {channels} input channels and divided by {channels} (a gray "
               f"image replicated over the channels gives the source's output)")
    elif channels == 1:
        adapted = kernel.sum(dim=1, keepdim=True)  # (O, C, k, k) → (O, 1, k, k)
        how = (f"the {have}-channel kernel summed over its channels into 1 (a gray image gives what the source "
               f"computed on it replicated over its {have} channels)")
    else:
        raise ChannelsRefused(f"the weights' first convolution reads {have} input channels and the spec's images have "
                              f"{channels}: only 1 → N (repeat, divide by N) and N → 1 (sum) are adapted; make "
                              f"input.channels {have}, or 1")
    return adapted.to(weight.dtype), how
