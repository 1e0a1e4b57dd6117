"""The plan of one seed of the study, or of its tuning run: which stages, with which settings, reading
which other stages. A stage's key is the digest of its settings and its inputs' keys, so a changed
setting re-runs that stage and everything downstream of it, and nothing else.

The confirmatory study (`plan_seed`): per model a pre-training (unless the model is not pre-trained),
one fine-tune at L at the model's frozen learning rate, an evaluation on test prompts at every
length of `Scale.lengths` (and, for RoPE models, at 4L with YaRN switched on at test time only: an
exploratory row); for the YaRN protocol's models a fine-tune inside the YaRN window at L_y and an
evaluation at L_y and 2 L_y; ablations of the meta models; the three analyses of Meta+RoPE.

The memory measurement (`plan_memory`, `metatokens reproduce --memory`): Meta+RoPE and GPT-2 (RoPE)
pre-trained and fine-tuned exactly as in the study (the same stages, the same keys), then each arm of
`design.MEMORY_ARMS` continued from them at every window and tested on the same test prompts.

The tuning run (`plan_tuning`, `metatokens reproduce --tune`): the tuned models pre-trained once,
fine-tuned at every rate of `Scale.lr_grid`, evaluated on *dev* prompts only; and the YaRN protocol
tried once on dev prompts. Its seed value is `Scale.tune_seed`, never one of the study's.
"""
from __future__ import annotations

from typing import Any

from ..errors import StudyError
from ..fileio import json_sha256
from ..training.config import load_run_config
from .design import MEMORY_ARMS, PAPER_MODELS, RESULT_FORMAT, TUNED_MODELS
from .stages import StageSpec

NEUTRAL_MODEL_DEFAULTS = {"attn_window": None, "attn_sinks": 0}


class Plan:
    """Builds StageSpecs; the bodies are `Stages` methods (`self._pretrain`, ...)."""

    tune: bool = False
    memory: bool = False

    def seed_value(self, seed: int) -> int:
        """The seed value that seed index `seed` trains and draws prompts with."""
        return self.scale.tune_seed if self.tune else self.scale.seed_base + seed

    def plan(self, seed: int) -> list[StageSpec]:
        specs = (self.plan_tuning(seed) if self.tune else self.plan_memory(seed) if self.memory
                 else self.plan_seed(seed))
        keys: dict[str, str] = {}
        for spec in specs:
            spec.key = json_sha256({"settings": spec.settings, "inputs": [keys[i] for i in spec.inputs]})[:16]
            keys[spec.name] = spec.key
        return specs

    # ----------------------------------------------------------------------------- building blocks

    def _dtype_overrides(self) -> list[str]:
        """The study's precision as a setting (none where it is auto, the default)."""
        dtype = self._dtype()
        return [] if dtype == "auto" else [f"train.dtype={dtype}"]

    def _dtype_flag(self) -> str:
        """The same, as a fine-tuning command shows it."""
        return "".join(f" --set {o}" for o in self._dtype_overrides())

    def _model_configs(self, sv: int, models) -> dict[str, Any]:
        sc = self.scale
        out = {}
        for m in models:
            ms = sc.models[m]
            overrides = [*sc.pretrain_overrides, *ms.overrides, f"train.seed={1337 + sv}", f"train.device={self.device}",
                         *self._dtype_overrides()]
            out[m] = (load_run_config(ms.preset, overrides), overrides)
        return out

    def _pretrain_spec(self, seed: int, m: str, cfg, overrides: list[str]) -> StageSpec:
        ms = self.scale.models[m]
        command = (f"metatokens pretrain --config {ms.preset} --out stages/seed{seed}/pretrain-{m}/run "
                   + " ".join(f"--set {o}" for o in overrides))
        settings = cfg.to_dict()
        settings["train"]["device"] = "auto"  # where a stage runs does not change what it measures
        settings["train"]["dtype"] = "auto"  # the study's precision, Stages._dtype: fp32 on a CPU, bf16 on CUDA
        # A model option added later whose default changes nothing stays out of the key while it is at that
        # default, so that stages run before it existed stay valid (attn_window: None is full attention; attn_sinks: 0).
        for key, default in NEUTRAL_MODEL_DEFAULTS.items():
            if settings["model"].get(key, default) == default:
                settings["model"].pop(key, None)
        return StageSpec(seed, f"pretrain-{m}", settings, [], command,
                         lambda f, r, inp, cfg=cfg: self._pretrain(cfg, f, r))

    def _finetune_spec(self, seed: int, sv: int, m: str, lr: float, name: str, tokenizer_from: str | None) -> StageSpec:
        sc, ms, L = self.scale, self.scale.models[m], self.scale.ft_len
        settings = {"tasks": list(sc.tasks), "weights": list(sc.ft_weights), "len": L, "steps": sc.ft_steps,
                    "batch": sc.ft_batch, "lr": lr, "min_lr_ratio": sc.ft_min_lr_ratio, "warmup": sc.ft_warmup,
                    "curve": [sc.ft_curve_points, sc.ft_curve_n], "seed": sv, "difficulty": sc.difficulty,
                    "meta": ms.meta, "curve_split": "dev"}
        inputs = [f"pretrain-{m}"] if ms.pretrained else [f"pretrain-{tokenizer_from}"] if tokenizer_from else []
        if not ms.pretrained:
            settings["from_scratch"] = {"preset": ms.preset, "overrides": [*sc.pretrain_overrides, *ms.overrides]}
        source = (f"--init stages/seed{seed}/pretrain-{m}/run" if ms.pretrained else
                  f"--from-scratch {ms.preset}"
                  + (f" --tokenizer stages/seed{seed}/pretrain-{tokenizer_from}/run/tokenizer.json" if tokenizer_from else "")
                  + "".join(f" --set {o}" for o in [*sc.pretrain_overrides, *ms.overrides] if o.startswith("model.")))
        command = (f"metatokens finetune {source} --task {','.join(sc.tasks)} "
                   f"--task-weights {','.join(map(str, sc.ft_weights))} --max-len {L} --difficulty {sc.difficulty} "
                   f"--meta {'on' if ms.meta else 'off'} --steps {sc.ft_steps} --batch-size {sc.ft_batch} "
                   f"--lr {lr:g} --seed {sv}{self._dtype_flag()} --out stages/seed{seed}/{name}/run")
        return StageSpec(seed, name, settings, inputs, command,
                         lambda f, r, inp, m=m, lr=lr: self._finetune(m, sv, lr, f, r, inp))

    def _evaluate_spec(self, seed: int, sv: int, m: str, source: str, name: str, split: str,
                       lengths: list[int], test_time_yarn: float | None) -> StageSpec:
        sc, ms = self.scale, self.scale.models[m]
        settings = {"lengths": lengths, "n": sc.eval_n, "seed": sv, "split": split, "no_meta": ms.meta,
                    "test_time_yarn": test_time_yarn, "difficulty": sc.difficulty, "format": RESULT_FORMAT}
        run = f"stages/seed{seed}/{source}/run"
        command = (f"metatokens evaluate --checkpoint {run} --task T --lengths {','.join(map(str, lengths))} "
                   f"--n {sc.eval_n} --seed {sv} --split {split} --skip-unfit, for each task T"
                   + ("; and --meta off" if ms.meta else "")
                   + (f"; and --lengths {4 * sc.ft_len} --yarn-scale {test_time_yarn:g}" if test_time_yarn else ""))
        return StageSpec(seed, name, settings, [source], command,
                         lambda f, r, inp: self._evaluate(m, sv, f, inp[source], split, lengths, test_time_yarn))

    def _yarn_spec(self, seed: int, sv: int, m: str, source: str, split: str) -> StageSpec:
        sc, ms, y = self.scale, self.scale.models[m], self.scale.yarn
        settings = {"protocol": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(y).items()
                                 if k != "models"},
                    "seed": sv, "split": split, "n": sc.eval_n, "meta": ms.meta, "difficulty": sc.difficulty,
                    "curve": [sc.ft_curve_points, sc.ft_curve_n], "format": RESULT_FORMAT}
        lengths = f"{y.length},{2 * y.length}"
        command = (f"metatokens finetune --init stages/seed{seed}/{source}/run --task {','.join(y.tasks)} "
                   f"--task-weights {','.join(map(str, y.weights))} --max-len {y.length} --yarn-scale {y.scale:g} "
                   f"--difficulty {sc.difficulty} --meta {'on' if ms.meta else 'off'} --steps {y.steps} "
                   f"--batch-size {y.batch} --lr {y.lr:g} --seed {sv}{self._dtype_flag()} --out stages/seed{seed}/yarn-{m}/run; then "
                   f"metatokens evaluate --checkpoint stages/seed{seed}/yarn-{m}/run --task T --lengths {lengths} "
                   f"--n {sc.eval_n} --seed {sv} --split {split}, for each task T")
        return StageSpec(seed, f"yarn-{m}", settings, [source], command,
                         lambda f, r, inp: self._yarn(m, sv, f, r, inp[source], split))

    # ----------------------------------------------------------------------------- the two plans

    def plan_seed(self, seed: int) -> list[StageSpec]:
        """Every stage of one confirmatory seed, in an order that starts the long ones first."""
        sc, L = self.scale, self.scale.ft_len
        models, sv = sc.models, self.seed_value(seed)
        configs = self._model_configs(sv, models)
        specs = [self._pretrain_spec(seed, m, *configs[m]) for m in models if models[m].pretrained]
        # models not pre-trained take a pre-trained meta model's tokenizer; with none (the demo), their own
        tokenizer_from = next((m for m, ms in models.items() if ms.pretrained and ms.meta), None)
        fine = [m for m in models if not models[m].pretrained] + [m for m in models if models[m].pretrained]
        for m in fine:
            specs.append(self._finetune_spec(seed, sv, m, sc.lr_for(m), f"finetune-{m}", tokenizer_from))
        if sc.yarn is not None:
            specs += [self._yarn_spec(seed, sv, m, f"finetune-{m}", "test") for m in sc.yarn.models if m in models]
        for m in models:
            window, rope = configs[m][0].model.block_size, configs[m][0].model.pos_encoding == "rope"
            # YaRN at test time, beyond the window: an exploratory row of the study; the demo reads L alone
            specs.append(self._evaluate_spec(seed, sv, m, f"finetune-{m}", f"evaluate-{m}", "test", sc.lengths(),
                                             4 * L / window if rope and not sc.demo else None))
        for m in PAPER_MODELS:
            if m in models and models[m].meta:
                settings = {"length": L, "n": sc.eval_n, "seed": sv, "difficulty": sc.difficulty, "format": RESULT_FORMAT}
                command = (f"metatokens analyze ablate --checkpoint stages/seed{seed}/finetune-{m}/run "
                           f"--task {','.join(sc.tasks)} --lengths {L} --n {sc.eval_n} --seed {sv}")
                specs.append(StageSpec(seed, f"ablate-{m}", settings, [f"finetune-{m}"], command,
                                       lambda f, r, inp, m=m: self._ablate(m, sv, f, inp)))
        for analysis in ("entropy", "residual", "rate-distortion") if "meta-rope" in models else ():
            settings = {"analysis": analysis, "length": L, "n": sc.analysis_n, "seed": sv, "epochs": sc.rd_epochs,
                        "format": RESULT_FORMAT}
            command = (f"metatokens analyze {analysis} --checkpoint stages/seed{seed}/finetune-meta-rope/run "
                       f"--task list_recall --length {L} --n {sc.analysis_n} --seed {sv}")
            specs.append(StageSpec(seed, f"analyze-{analysis}", settings, ["finetune-meta-rope"], command,
                                   lambda f, r, inp, a=analysis: self._analyze(a, sv, f, inp)))
        return specs

    def plan_tuning(self, seed: int) -> list[StageSpec]:
        """The learning-rate grid on dev prompts (one seed), and the YaRN protocol tried on dev prompts."""
        sc, L = self.scale, self.scale.ft_len
        sv = self.seed_value(seed)
        tuned = [m for m in TUNED_MODELS if m in sc.models]
        configs = self._model_configs(sv, tuned)
        specs = [self._pretrain_spec(seed, m, *configs[m]) for m in tuned]
        for lr in sc.lr_grid:
            for m in tuned:
                specs.append(self._finetune_spec(seed, sv, m, lr, f"finetune-{m}-lr{lr:g}", tuned[0]))
        for lr in sc.lr_grid:
            for m in tuned:
                specs.append(self._evaluate_spec(seed, sv, m, f"finetune-{m}-lr{lr:g}", f"evaluate-{m}-lr{lr:g}", "dev",
                                                 [L, 2 * L], None))
        if sc.yarn is not None and sc.lr_grid:
            lr = max(sc.lr_grid)  # the protocol is checked once, from the fine-tune at the grid's largest rate
            specs += [self._yarn_spec(seed, sv, m, f"finetune-{m}-lr{lr:g}", "dev") for m in sc.yarn.models if m in tuned]
        return specs

    def plan_memory(self, seed: int) -> list[StageSpec]:
        """The memory measurement of one seed: the study's own pre-training and fine-tuning of Meta+RoPE and
        GPT-2 (RoPE), then one `window-<arm>[-w<W>]` stage per arm and window (continue, then test)."""
        sc, mp, L = self.scale, self.scale.memory, self.scale.ft_len
        sv = self.seed_value(seed)
        base = ("meta-rope", "gpt2-rope")
        if mp is None or any(m not in sc.models for m in base):
            raise StudyError("the memory measurement needs a scale with a memory protocol and the meta-rope and "
                             "gpt2-rope models")
        configs = self._model_configs(sv, base)
        specs = [self._pretrain_spec(seed, m, *configs[m]) for m in base]
        specs += [self._finetune_spec(seed, sv, m, sc.lr_for(m), f"finetune-{m}", None) for m in base]
        for arm, (_, model, meta, windowed, sinks) in MEMORY_ARMS.items():
            for w in mp.windows if windowed else [None]:
                name = f"window-{arm}" + (f"-w{w}" if w else "")
                overrides = ([f"model.attn_window={w}"] if w else []) + ([f"model.attn_sinks={mp.sinks}"] if sinks else [])
                settings = {"protocol": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(mp).items()
                                         if k not in ("windows", "sinks", "eval_n")},
                            "arm": arm, "window": w, "sinks": mp.sinks if sinks else 0, "meta": meta, "len": L,
                            "seed": sv, "difficulty": sc.difficulty, "n": mp.eval_n,
                            "curve": [sc.ft_curve_points, sc.ft_curve_n], "format": RESULT_FORMAT,
                            "test_time_windows": list(mp.windows) if arm == "full" else []}
                command = (f"metatokens finetune --init stages/seed{seed}/finetune-{model}/run "
                           f"--task {','.join(mp.tasks)} --task-weights {','.join(map(str, mp.weights))} --max-len {L} "
                           f"--difficulty {sc.difficulty} --meta {'on' if meta else 'off'} --steps {mp.steps} "
                           f"--batch-size {mp.batch} --lr {mp.lr:g} --seed {sv}{self._dtype_flag()}"
                           + "".join(f" --set {o}" for o in overrides) + f" --out stages/seed{seed}/{name}/run; then "
                           f"metatokens evaluate --checkpoint stages/seed{seed}/{name}/run --task T --lengths {L} "
                           f"--n {mp.eval_n} --seed {sv} --split test, for each task T"
                           + (f"; and --set model.attn_window=W for W in {', '.join(map(str, mp.windows))}"
                              if arm == "full" else ""))
                specs.append(StageSpec(seed, name, settings, [f"finetune-{model}"], command,
                                       lambda f, r, inp, arm=arm, w=w, model=model:
                                       self._window(arm, w, sv, f, r, inp[f"finetune-{model}"])))
        return specs
