"""Backbone weights by name: ``hf-hub:timm/<model>.<tag>[@revision]`` -> a cached ``.weights.h5``.

`resolve_hub_weights` downloads the repository's ``model.safetensors`` with
`huggingface_hub` (extra ``hub``; it keeps its own cache, honours ``HF_HUB_CACHE`` /
``HF_HOME`` / ``HF_HUB_OFFLINE`` and falls back to that cache when the hub cannot be
reached), converts it with `timm_weights.convert_checkpoint` and keeps the result in

    $SCDNN_CACHE/hf-hub/models--<owner>--<name>/<commit>/<arch>.weights.h5
    ($SCDNN_CACHE defaults to ~/.cache/scdnn_tf)

keyed by the repository and the resolved commit, so a moved ``main`` converts again
and an unchanged one is reused. The file is written to a temporary name and renamed,
so an interrupted or concurrent conversion never leaves a partial file under that name.
Its shapes are checked against the architecture when it is loaded (`weights_by_name`).
A cached conversion that no longer reads back (a truncated or damaged file) is converted
again from the checkpoint, with a warning; a damaged checkpoint in the Hugging Face
cache is an error naming the file and what to do (download it again, or replace it).
"""

from __future__ import annotations

import os
import random
import re
import tempfile

from absl import logging

PREFIX = "hf-hub:"
FILENAME = "model.safetensors"
CACHE_ENV = "SCDNN_CACHE"
# timm model names (the part of the repo name before the first ".") -> our backbone.
TIMM_ARCHS = {"resnext101_32x8d": "resnext101_32x8d", "resnext50_32x4d": "resnext50_32x4d",
              "resnet50": "resnet50_tv"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


class HubWeightsError(RuntimeError, OSError):
    """Hub weights that can be neither downloaded nor read from the cache.

    An OSError too, so the command-line tools report it as one line (a user's
    environment problem whose message says what to do)."""


_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_spec(weights) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``hf-hub:owner/name[@revision]`` -> (repo_id, revision); revision defaults to main.

    Raises:
        ValueError: not of that form.
    """
    repo_id, at, revision = spec[len(PREFIX):].partition("@")
    if not is_hub_spec(spec) or not _REPO.fullmatch(repo_id) or (at and not revision):
        raise ValueError(f"{spec!r} is not of the form hf-hub:OWNER/NAME[@REVISION], "
                         "e.g. hf-hub:timm/resnext101_32x8d.tv_in1k")
    return repo_id, revision or "main"


def check_hub_arch(spec: str, arch: str) -> None:
    """Raises ValueError when `spec` names a timm model that is not backbone `arch`."""
    from scdnn_tf.modeling.timm_weights import ARCHS  # noqa: PLC0415 (import cycle)

    repo_id, _ = parse_hub_spec(spec)
    if arch not in ARCHS:
        hint = (" (use --backbone=resnet50_tv for torch ResNet-50 weights)"
                if arch == "resnet50" else "")
        raise ValueError(f"{spec!r}: hub checkpoints convert into {', '.join(ARCHS)}, not "
                         f"backbone {arch!r}{hint}")
    owner, name = repo_id.split("/")
    expected = TIMM_ARCHS.get(name.split(".")[0]) if owner == "timm" else None
    if expected is not None and expected != arch:
        raise ValueError(f"{spec!r} holds {name.split('.')[0]} weights, which load into "
                         f"backbone {expected!r}, not {arch!r}")


def cache_root() -> str:
    """$SCDNN_CACHE, else ~/.cache/scdnn_tf."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "scdnn_tf")


def converted_path(repo_id: str, commit: str, arch: str) -> str:
    """Where the converted weights of `repo_id` at `commit` for `arch` are cached."""
    folder = "models--" + repo_id.replace("/", "--")
    return os.path.join(cache_root(), "hf-hub", folder, commit, f"{arch}.weights.h5")


def manual_commands(repo_id: str, arch: str) -> str:
    """The commands that fetch and convert `repo_id` by hand (for error messages)."""
    return (f"`hf download {repo_id} {FILENAME} --local-dir=weights/{arch}`, then "
            f"`python -m data_tools.convert_weights --source=weights/{arch}/{FILENAME} "
            f"--arch={arch} --output=weights/{arch}.weights.h5` and "
            f"--backbone_weights=weights/{arch}.weights.h5")


def download_checkpoint(repo_id: str, revision: str, arch: str) -> str:
    """Path of `repo_id`'s model.safetensors in the Hugging Face cache (downloaded if needed).

    Raises:
        HubWeightsError: one line naming what is missing and the manual commands, when
            huggingface_hub is absent or the file is neither reachable nor cached.
    """
    manual = manual_commands(repo_id, arch)
    try:
        import huggingface_hub  # noqa: PLC0415 (optional extra)
        from huggingface_hub import constants, errors  # noqa: PLC0415
    except ImportError:
        raise HubWeightsError(f"hf-hub:{repo_id} needs huggingface_hub: pip install "
                           f"'scdnn_tf[hub]'; or by hand: {manual}") from None
    try:
        return huggingface_hub.hf_hub_download(repo_id, FILENAME, revision=revision)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        offline = "offline mode (HF_HUB_OFFLINE) is on" if isinstance(
            e, errors.OfflineModeIsEnabled) or constants.is_offline_mode() \
            else "the hub cannot be reached"
        raise HubWeightsError(
            f"{FILENAME} of {repo_id}@{revision} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {offline}; on a machine with "
            f"internet run {manual} (or copy that machine's Hugging Face cache here and set "
            f"HF_HUB_CACHE)") from None
    except errors.HfHubHTTPError as e:  # unknown repo / revision / file, gated repo
        message = " ".join(str(e).split())
        raise HubWeightsError(f"cannot fetch {FILENAME} of {repo_id}@{revision}: {message}") from None


def resolve_hub_weights(spec: str, arch: str) -> str:
    """Local ``.weights.h5`` for ``hf-hub:`` spec `spec` and backbone `arch`.

    A revision given as a 40-hex commit whose conversion is cached needs no hub call.

    Returns:
        Path of the converted by-name weights file (backbone + ImageNet ``fc``).

    Raises:
        ValueError: a bad spec, a timm model of another architecture, or a checkpoint
            that does not fit `arch` (missing/extra keys, shapes).
        HubWeightsError: the checkpoint can be neither downloaded nor found in the cache,
            or the cached checkpoint is damaged (the message names it and what to do).
    """
    from scdnn_tf.modeling.timm_weights import DamagedCheckpointError  # noqa: PLC0415

    check_hub_arch(spec, arch)
    repo_id, revision = parse_hub_spec(spec)
    checked = set()  # cached conversions found damaged (warned once)
    if _COMMIT.fullmatch(revision) and _usable_conversion(
            spec, converted_path(repo_id, revision, arch), checked):
        return converted_path(repo_id, revision, arch)
    checkpoint = download_checkpoint(repo_id, revision, arch)
    # The hub cache stores a file as snapshots/<commit>/<filename>: the folder is the commit.
    commit = os.path.basename(os.path.dirname(checkpoint))
    output = converted_path(repo_id, commit, arch)
    if _usable_conversion(spec, output, checked):
        logging.info("%s: using the cached conversion %s", spec, output)
        return output
    try:
        _convert_atomically(checkpoint, arch, output)
    except DamagedCheckpointError as e:
        raise HubWeightsError(damaged_download_message(repo_id, commit, checkpoint, e)) from None
    logging.info("%s: converted %s into %s", spec, checkpoint, output)
    return output


def _usable_conversion(spec: str, path: str, checked: set) -> bool:
    """True if the cached conversion `path` exists and reads back; a damaged one is
    reported (once) as a warning and will be converted again."""
    from scdnn_tf.modeling.weights_by_name import check_readable  # noqa: PLC0415

    if path in checked or not os.path.lexists(path):
        return False
    try:
        check_readable(path)
        return True
    except ValueError as e:
        checked.add(path)
        logging.warning("%s: the cached conversion is damaged and is converted again from "
                        "the checkpoint: %s", spec, e)
        return False


def damaged_download_message(repo_id: str, commit: str, checkpoint: str, error) -> str:
    """One line for a damaged `checkpoint` in the Hugging Face cache (`error`: its
    `timm_weights.DamagedCheckpointError`): the snapshot file, the blob it points to, and
    what to do (offline: which file to replace)."""
    from huggingface_hub import constants  # noqa: PLC0415 (optional extra)

    blob = os.path.realpath(checkpoint)
    where = checkpoint if blob == checkpoint else f"{checkpoint} (-> {blob})"
    fetch = f"hf download {repo_id} {FILENAME} --revision={commit} --force-download"
    if constants.is_offline_mode():
        todo = (f"offline mode (HF_HUB_OFFLINE) is on: replace {blob} with an intact copy of "
                f"{FILENAME} of {repo_id}@{commit} (on a machine with internet: `{fetch}`), "
                "or delete it and run again with the hub reachable")
    else:
        todo = f"delete {blob} and run again to download it anew (or run `{fetch}`)"
    return f"the Hugging Face cache's {where} is damaged, {error.reason}; {todo}"


def _convert_atomically(checkpoint: str, arch: str, output: str) -> None:
    from scdnn_tf.modeling.timm_weights import convert_checkpoint  # noqa: PLC0415

    os.makedirs(os.path.dirname(output), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5.tmp", dir=os.path.dirname(output))
    os.close(fd)
    # Building the conversion model draws Keras' default initializer seeds from Python's
    # `random`: restore it so a seeded run initializes the rest of the network exactly as
    # it does when the conversion is already cached (or the weights are a local file).
    state = random.getstate()
    try:
        convert_checkpoint(checkpoint, arch, tmp)
        os.replace(tmp, output)
    finally:
        random.setstate(state)
        if os.path.exists(tmp):
            os.remove(tmp)
