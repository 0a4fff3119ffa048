"""The training config: typed sections (pydantic), list and mapping keys from YAML and the command line, no bool
where a number belongs, errors that name the dotted key and the value, and every shipped recipe through dump and
load."""
import pytest
import yaml

from fastgrpo.train import TrainConfig, load_config
from fastgrpo.train.config import RECIPES, Section, dump_config, recipe_names, to_dict

SD3 = ("model.kind=sd3", "data.train_prompts=prompts.txt", "reward.names=pickscore,hpsv2")  # real-model rewards


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("override, section, key, want", [
    ("reward.names=[pickscore,hpsv2]", "reward", "names", ["pickscore", "hpsv2"]),
    ("reward.names=[pickscore, hpsv2]", "reward", "names", ["pickscore", "hpsv2"]),
    ("reward.names=pickscore,hpsv2", "reward", "names", ["pickscore", "hpsv2"]),
    ("reward.names=pickscore", "reward", "names", ["pickscore"]),
    ("reward.weights=[1, 0.5]", "reward", "weights", [1.0, 0.5]),
    ("reward.weights=2,1", "reward", "weights", [2.0, 1.0]),
    ("branch.points=[0,1]", "branch", "points", [0, 1]),
    ("branch.points=0,1", "branch", "points", [0, 1]),
    ("branch.points=2", "branch", "points", [2]),
    ("branch.strides=1,2,3", "branch", "strides", [1, 2, 3]),
    ("model.lora_targets=[to_q,to_out.0]", "model", "lora_targets", ["to_q", "to_out.0"]),
    ("model.lora_targets=to_q , to_k", "model", "lora_targets", ["to_q", "to_k"]),
    ("model.lora_targets=to_q", "model", "lora_targets", ["to_q"]),
])
def test_list_keys_from_the_command_line(override, section, key, want):
    got = getattr(getattr(load_config(None, SD3 + (override,)), section), key)
    assert got == want and type(got) is list
    assert [type(v) for v in got] == [type(v) for v in want]  # weights are floats even when written 1


@pytest.mark.parametrize("override", ["reward.paths=pickscore=/a,hpsv2=/b", "reward.paths=pickscore=/a, hpsv2=/b",
                                      "reward.paths={pickscore: /a, hpsv2: /b}"])
def test_reward_paths_from_the_command_line(override):
    cfg = load_config(None, SD3 + (override,))
    assert cfg.reward.paths == {"pickscore": "/a", "hpsv2": "/b"}


def test_list_and_mapping_keys_from_yaml(tmp_path):
    path = _yaml(tmp_path, "model: {kind: sd3, lora_targets: [to_q, to_out.0]}\n"
                           "data: {train_prompts: p.txt}\n"
                           "reward:\n  names: [pickscore, hpsv2]\n  weights: [1, 0.5]\n"
                           "  paths:\n    pickscore: /models/pick\n    hpsv2: /models/hps\n"
                           "branch: {points: [0, 2], strides: [1]}\n")
    cfg = load_config(path)
    assert cfg.model.lora_targets == ["to_q", "to_out.0"]
    assert cfg.reward.names == ["pickscore", "hpsv2"] and cfg.reward.weights == [1.0, 0.5]
    assert cfg.reward.paths == {"pickscore": "/models/pick", "hpsv2": "/models/hps"}
    assert cfg.branch.points == [0, 2] and cfg.branch.strides == [1]
    # a command-line list replaces the file's
    assert load_config(path, ("branch.points=3",)).branch.points == [3]


def test_comma_strings_in_yaml_still_load(tmp_path):
    """The config.yaml of a run from before the lists: comma-separated strings, "" for none."""
    path = _yaml(tmp_path, "model: {lora_targets: 'to_q,to_k'}\nreward: {names: world, weights: '', paths: ''}\n"
                           "branch: {points: '0,1,2,3', strides: '1,2'}\n")
    cfg = load_config(path)
    assert cfg.model.lora_targets == ["to_q", "to_k"]
    assert (cfg.reward.names, cfg.reward.weights, cfg.reward.paths) == (["world"], [], {})
    assert (cfg.branch.points, cfg.branch.strides) == ([0, 1, 2, 3], [1, 2])


@pytest.mark.parametrize("override, message", [
    ("branch.points=0,a", r"config key 'branch\.points\[1\]' = 'a': Input should be a valid integer"),
    ("branch.points=[0, 1.5]", r"'branch\.points\[1\]' = 1\.5: Input should be a valid integer, got a number with "
                               "a fractional part"),
    ("branch.strides=[true]", r"'branch\.strides' = \[True\]: expects a number, not true/false"),
    ("reward.weights=1,heavy", r"'reward\.weights\[1\]' = 'heavy': Input should be a valid number"),
    ("model.lora_targets=[[to_q]]", r"'model\.lora_targets\[0\]' = \['to_q'\]: Input should be a valid string"),
    ("reward.names={pickscore: 1}", r"'reward\.names' = \{'pickscore': 1\}: Input should be a valid list"),
    ("reward.names=[pickscore", r"'reward\.names': '\[pickscore' is not a YAML value"),
    ("reward.paths=pickscore", r"'reward\.paths' = 'pickscore': expects a mapping"),
    ("reward.paths=[pickscore]", r"'reward\.paths' = \['pickscore'\]: Input should be a valid dictionary"),
    ("reward.paths={pickscore: [a]}", r"'reward\.paths\.pickscore' = \['a'\]: Input should be a valid string"),
])
def test_list_element_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, SD3 + (override,))


def test_values_are_checked():
    with pytest.raises(ValueError, match="reward.weights has 2 entries for 1 reward.names"):
        load_config(None, SD3 + ("reward.names=pickscore", "reward.weights=1,2"))
    with pytest.raises(ValueError, match=r"reward.paths names \['hpsv2'\], not in reward.names"):
        load_config(None, SD3 + ("reward.names=pickscore", "reward.paths=hpsv2=/b"))
    with pytest.raises(ValueError, match="reward.names is empty"):
        load_config(None, SD3 + ("reward.names=[]",))
    with pytest.raises(ValueError, match="model.lora_targets is empty"):
        load_config(None, ("model.lora_rank=4", "model.lora_targets="))
    with pytest.raises(ValueError, match="branch.points"):
        load_config(None, ("branch.enabled=true", "branch.points=0,9"))
    with pytest.raises(ValueError, match="branch.strides"):
        load_config(None, ("branch.strides=",))
    with pytest.raises(ValueError, match="branch.strides"):
        load_config(None, ("branch.strides=[1, 0]",))
    with pytest.raises(ValueError, match="branch.points is empty"):
        load_config(None, ("branch.points=",))
    with pytest.raises(ValueError, match="adagrpo.keep"):
        load_config(None, ("adagrpo.keep=40", "adagrpo.candidates=8"))
    with pytest.raises(ValueError, match="window.size"):
        load_config(None, ("window.size=12",))


@pytest.mark.parametrize("text, want", [("true", True), ("false", False), ("yes", True), ("no", False),
                                        ("1", True), ("0", False), ("True", True), ("NO", False), ("off", False)])
def test_bool_words_on_the_command_line(text, want):
    assert load_config(None, (f"window.flash={text}",)).window.flash is want


@pytest.mark.parametrize("override, message", [
    ("window.flash=2", r"'window\.flash' = 2: Input should be a valid boolean"),
    ("window.flash=maybe", r"'window\.flash' = 'maybe': Input should be a valid boolean"),
    ("group_size=true", r"'group_size' = True: expects a number, not true/false"),
    ("group_size=2.5", r"'group_size' = 2\.5: Input should be a valid integer"),
    ("group_size=many", r"'group_size' = 'many': Input should be a valid integer"),
    ("optim.lr=true", r"'optim\.lr' = True: expects a number, not true/false"),
    ("optim.lr=fast", r"'optim\.lr' = 'fast': Input should be a valid number"),
    ("optim.lr=nan", r"'optim\.lr' = 'nan': Input should be greater than 0"),
    ("eval_batch=true", r"'eval_batch' = True: expects a number"),
    ("model.kind=[sd3]", r"'model\.kind' = \['sd3'\]: Input should be 'world', 'sd3', 'flux', 'flux2', 'qwenimage', 'zimage' or 'wan'"),
    ("out_dir={a: 1}", r"'out_dir' = \{'a': 1\}: Input should be a valid string"),
])
def test_wrong_types_on_the_command_line_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, (override,))


@pytest.mark.parametrize("text, message", [
    ("window: {flash: 2}", r"'window\.flash' = 2: Input should be a valid boolean"),
    ("group_size: true", r"'group_size' = True: expects a number, not true/false"),
    ("group_size: 2.5", r"'group_size' = 2\.5: Input should be a valid integer"),
    ("optim: {lr: true}", r"'optim\.lr' = True: expects a number"),
    ("model: {kind: [sd3]}", r"'model\.kind' = \['sd3'\]: Input should be 'world', 'sd3', 'flux', 'flux2', 'qwenimage', 'zimage' or 'wan'"),
    ("device: true", r"'device' = True: Input should be a valid string"),
    ("data: {train_prompts: {a: 1}}", r"'data\.train_prompts' = \{'a': 1\}: Input should be a valid string"),
    ("window: 4", r"'window' is a section"),
    ("window: {size: 2, sise: 3}", r"unknown config key 'window\.sise' \(did you mean 'size'\?\)"),
])
def test_wrong_types_in_yaml_name_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_config(_yaml(tmp_path, text + "\n"))


def test_numbers_convert_where_exact(tmp_path):
    cfg = load_config(_yaml(tmp_path, "group_size: 8.0\noptim: {lr: 3e-5, grad_clip: 2}\nsampling: {steps: 12}\n"))
    assert cfg.group_size == 8 and type(cfg.group_size) is int
    assert cfg.optim.lr == 3e-5 and cfg.optim.grad_clip == 2.0 and type(cfg.optim.grad_clip) is float
    cfg = load_config(None, ("group_size=8", "optim.lr=1e-3", "optim.grad_clip=2", "model.path=null"))
    assert (cfg.group_size, cfg.optim.lr, cfg.optim.grad_clip, cfg.model.path) == (8, 1e-3, 2.0, None)
    assert type(cfg.optim.grad_clip) is float


def test_closed_choices_list_the_allowed_values():
    with pytest.raises(ValueError, match="'model.kind' = 'sdxl': Input should be 'world', 'sd3', 'flux', 'flux2', 'qwenimage', 'zimage' or 'wan'$"):
        load_config(None, ("model.kind=sdxl",))
    with pytest.raises(ValueError, match="'window.schedule' = 'sliding': Input should be 'progressive', 'frozen', "
                                         "'random', 'linear_decay' or 'exp_decay'"):
        load_config(None, ("window.schedule=sliding",))
    with pytest.raises(ValueError, match="'sampling.family' = 'ode': Input should be 'flow_sde', 'dance_sde', 'cps' "
                                         "or 'ddim_sde'"):
        load_config(None, ("sampling.family=ode",))


def test_every_wrong_key_is_reported_at_once():
    with pytest.raises(ValueError) as error:
        load_config(None, ("window.size=0", "optim.lr=-1", "adagrpo.selection=best"))
    lines = str(error.value).splitlines()
    assert len(lines) == 3 and lines[0].startswith("config key 'window.size' = 0: Input should be greater than or "
                                                   "equal to 1")
    assert "'adagrpo.selection' = 'best'" in lines[1] and "'optim.lr' = -1" in lines[2]  # in the file's order


def test_a_checkpoint_config_of_another_version_names_the_key():
    from fastgrpo.train.config import from_dict, to_dict

    saved = to_dict(TrainConfig())
    assert from_dict(saved) == TrainConfig()
    saved["window"]["retired_option"] = 1
    with pytest.raises(ValueError, match="unknown config key 'window.retired_option'"):
        from_dict(saved)


def test_method_settings_that_contradict_each_other_name_the_keys():
    assert load_config("diffusion_nft").method == "nft"
    with pytest.raises(ValueError, match="'method' = 'nfts': Input should be 'grpo', 'nft', 'awm' or 'dgpo'"):
        load_config(None, ("method=nfts",))
    with pytest.raises(ValueError, match=r"method=nft contradicts sampling.guidance > 1"):
        load_config(None, ("method=nft", "sampling.guidance=4.5"))
    with pytest.raises(ValueError, match=r"method=nft contradicts branch.enabled, stepwise.enabled"):
        load_config(None, ("method=nft", "branch.enabled=true", "stepwise.enabled=true", "window.flash=false",
                           "adagrpo.fusion=false"))
    with pytest.raises(ValueError, match="nft.timestep_fraction"):
        load_config(None, ("method=nft", "nft.timestep_fraction=0"))
    with pytest.raises(ValueError, match="nft.beta"):
        load_config(None, ("nft.beta=-1",))
    assert load_config("awm").method == "awm"
    with pytest.raises(ValueError, match=r"method=awm contradicts sampling.guidance > 1"):
        load_config("awm", ("sampling.guidance=2",))
    with pytest.raises(ValueError, match="awm.time_fraction=0.1 leaves no timestep"):
        load_config("awm", ("awm.time_fraction=0.1",))
    with pytest.raises(ValueError, match="awm.ghuber_power"):
        load_config("awm", ("awm.ghuber_power=2",))
    with pytest.raises(ValueError, match=r"dgpo.timesteps=6 must be in \[1, dgpo.trunc_steps \+ 1 = 5\]"):
        load_config("dgpo", ("dgpo.timesteps=6",))
    with pytest.raises(ValueError, match="dgpo.trunc_steps=12 must be < sampling.steps=10"):
        load_config("dgpo", ("dgpo.trunc_steps=12",))
    with pytest.raises(ValueError, match="guard.rationorm .* not with method=nft"):
        load_config("diffusion_nft", ("guard.rationorm=true",))
    with pytest.raises(ValueError, match="guard.rationorm .* branch.enabled"):
        load_config("g2rpo", ("guard.rationorm=true",))
    with pytest.raises(ValueError, match=r"branch.pave_splits=\[1, 2\]: every split must be >= 2"):
        load_config("pave_grpo", ("branch.pave_splits=1,2",))
    with pytest.raises(ValueError, match="branch.pave_splits .* sampling.logprob=quadratic"):
        load_config("pave_grpo", ("sampling.logprob=full",))
    with pytest.raises(ValueError, match="branch.noise_weight .* needs branch.enabled"):
        load_config(None, ("branch.noise_weight=true",))
    with pytest.raises(ValueError, match="stepwise.enabled .* excludes branch.enabled"):  # TempFlow + Stepwise
        load_config("tempflow_grpo", ("stepwise.enabled=true",))


def test_unknown_keys_name_the_nearest():
    with pytest.raises(ValueError, match="unknown config key 'windoe'.*did you mean 'window'"):
        load_config(None, ("windoe.size=2",))
    with pytest.raises(ValueError, match="unknown config key 'reward.name'.*did you mean 'names'"):
        load_config(None, ("reward.name=world",))


@pytest.mark.parametrize("key", ["eval_every", "checkpoint_every"])
def test_every_zero_means_never_and_negative_is_refused(tmp_path, key):
    assert getattr(load_config(None, (f"{key}=0",)), key) == 0
    assert getattr(load_config(_yaml(tmp_path, f"{key}: 0\n")), key) == 0
    with pytest.raises(ValueError, match=f"'{key}' = -1: Input should be greater than or equal to 0"):
        load_config(None, (f"{key}=-1",))


def test_the_shipped_recipes_are_every_one_tested():
    assert recipe_names() == ["adagrpo_flow_grpo", "awm", "dance_grpo", "default", "dgpo", "diffusion_nft",
                              "flow_cps", "flow_grpo", "flow_grpo_fast", "flux2_dev_flow_factory",
                              "flux2_klein_flow_factory", "flux_adagrpo_mixgrpo", "g2rpo", "grpo_guard", "mixgrpo",
                              "mixgrpo_flash", "pave_grpo", "qwenimage_dance_grpo", "sd35m_adagrpo_mixgrpo",
                              "stepwise_flow_grpo", "tempflow_grpo", "wan21_flow_factory", "wan22_flow_factory",
                              "zimage_flow_factory"]


@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_round_trips_through_dump_and_load(recipe, tmp_path):
    cfg = load_config(recipe, ("data.train_prompts=prompts.txt",))  # the sd3 / flux recipes need prompts
    dump_config(cfg, tmp_path / "again.yaml")
    assert load_config(str(tmp_path / "again.yaml")) == cfg
    saved = to_dict(cfg)  # what a checkpoint holds: plain lists and dicts
    assert type(saved["reward"]["names"]) is list and type(saved["reward"]["paths"]) is dict
    assert type(saved["branch"]["points"]) is list and type(saved["model"]["lora_targets"]) is list
    dumped = yaml.safe_load((tmp_path / "again.yaml").read_text())
    assert dumped["branch"]["points"] == cfg.branch.points and dumped["reward"]["names"] == cfg.reward.names


def test_recipe_lists_hold_their_values():
    g2rpo = load_config("g2rpo")
    assert (g2rpo.branch.enabled, g2rpo.branch.points, g2rpo.branch.strides) == (True, [0, 1, 2, 3], [1, 2])
    sd35m = load_config("sd35m_adagrpo_mixgrpo", ("data.train_prompts=p.txt",
                                                  "reward.paths=pickscore=/models/PickScore_v1"))
    assert sd35m.model.lora_targets == ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                        "add_v_proj", "to_add_out"]
    assert sd35m.reward.names == ["pickscore"] and sd35m.reward.paths == {"pickscore": "/models/PickScore_v1"}
    flux = load_config("flux_adagrpo_mixgrpo", ("data.train_prompts=p.txt",))
    assert flux.reward.names == ["hpsv2"] and flux.reward.paths == {}


def test_defaults():
    cfg = TrainConfig()
    assert cfg.reward.names == ["world"] and cfg.reward.weights == [] and cfg.reward.paths == {}
    assert cfg.branch.points == [0, 1, 2, 3] and cfg.branch.strides == [1, 2]
    assert cfg.model.lora_targets == ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                      "ff.net.0.proj", "ff.net.2", "proj_out"]
    assert TrainConfig().reward.names is not cfg.reward.names  # no list shared between configs


def test_default_yaml_lists_the_field_defaults():
    path = RECIPES / "default.yaml"
    assert load_config(str(path)) == TrainConfig()

    def keys(cls, prefix=""):  # every field, dotted
        out = set()
        for name, info in cls.model_fields.items():
            nested = isinstance(info.annotation, type) and issubclass(info.annotation, Section)
            out |= keys(info.annotation, prefix + name + ".") if nested else {prefix + name}
        return out

    top = yaml.safe_load(path.read_text())  # sections are the top-level mappings, one level deep
    listed = ({f"{section}.{key}" for section, fields in top.items() if isinstance(fields, dict) for key in fields}
              | {key for key, value in top.items() if not isinstance(value, dict)})
    assert listed == keys(TrainConfig)  # every key is listed
    assert "reward.paths" in keys(TrainConfig) and "eval_every" in keys(TrainConfig)


def test_dump_writes_yaml_lists(tmp_path):
    cfg = load_config(None, ("branch.points=0,2",))
    dump_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "  points:\n  - 0\n  - 2\n" in text and "  names:\n  - world\n" in text and "  paths: {}\n" in text


@pytest.mark.parametrize("command", ["train", "config"])
def test_the_command_line_reports_a_wrong_key_without_a_traceback(command, capsys):
    from fastgrpo.cli import main

    with pytest.raises(SystemExit) as done:
        main([command, "window.sise=3", "optim.lr=fast"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert f"fastgrpo {command}: error: unknown config key 'window.sise' (did you mean 'size'?)" in err
    assert "config key 'optim.lr' = 'fast': Input should be a valid number" in err
    with pytest.raises(SystemExit):
        main([command, "--config", "mixgrpp"])
    assert "no such file, nor a shipped recipe" in capsys.readouterr().err


def test_config_keys_describe_every_field():
    from fastgrpo.train.config import describe

    text = describe()
    for section, fields in to_dict(TrainConfig()).items():
        for key in fields if isinstance(fields, dict) else [None]:
            assert (f"{section}.{key}: " if key else f"{section}: ") in text
    assert "method: Literal['grpo', 'nft', 'awm', 'dgpo'] = 'grpo'\n    grpo: the SDE-replay family" in text
