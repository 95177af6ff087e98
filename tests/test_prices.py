from decimal import Decimal

import pytest

from quota import ConfigError, InvalidInput, PriceTable, UnknownModel


def test_default_table_is_the_seeds():
    table = PriceTable()
    config = table.get_model_cost_config("system_deepseek")
    assert config["name"] == "DeepSeek Chat（系统提供）"
    assert config["cost_per_1k_input"] == Decimal("0.001")
    assert config["cost_per_1k_output"] == Decimal("0.002")
    assert config["is_system"] is True
    price = table.lookup("system_deepseek")
    assert price.cost_nano(12000, 8000) == 28_000_000  # 0.012 + 0.016 CNY = 0.028 CNY


def test_system_iff_in_system_table():
    table = PriceTable()
    assert table.is_system("system_deepseek")
    custom = table.lookup("custom_xxx")
    assert not custom.is_system and custom.cost_nano(10**9, 10**9) == 0


@pytest.mark.parametrize("model_id", ["system_gpt5", "system_", "system_deepseek2"])
def test_unlisted_system_id_is_an_error_never_custom(model_id):
    with pytest.raises(UnknownModel, match="unknown system model"):
        PriceTable().lookup(model_id)


@pytest.mark.parametrize("model_id", ["", "a b", "x{y}", "m\n", "x" * 49, 5, None, "模型"])
def test_malformed_model_ids(model_id):
    with pytest.raises(InvalidInput):
        PriceTable().lookup(model_id)


def test_toml_extends_and_replaces(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        '[system.system_qwen]\nname = "Qwen"\ncost_per_1k_input = "0.0005"\ncost_per_1k_output = 0.001\n'
        '[custom.custom_gpt]\ncost_per_1k_input = "0.0175"\ncost_per_1k_output = "0.07"\n',
        encoding="utf-8",
    )
    table = PriceTable.from_toml(path)
    assert set(table.system_models) == {"system_deepseek", "system_qwen"}
    assert table.lookup("system_qwen").cost_nano(1000, 1000) == 1_500_000
    assert table.lookup("custom_gpt").cost_nano(1000, 1000) == 87_500_000
    assert not table.lookup("custom_gpt").is_system

    path.write_text(
        'replace_defaults = true\n[system.system_qwen]\ncost_per_1k_input = "0.0005"\ncost_per_1k_output = "0.001"\n',
        encoding="utf-8",
    )
    table = PriceTable.from_toml(path)
    assert set(table.system_models) == {"system_qwen"}
    with pytest.raises(UnknownModel):
        table.lookup("system_deepseek")


@pytest.mark.parametrize(
    "body, message",
    [
        ("[system.custom_x]\ncost_per_1k_input = 1\ncost_per_1k_output = 1\n", "must start with"),
        ("[custom.system_x]\ncost_per_1k_input = 1\ncost_per_1k_output = 1\n", "must not start with"),
        ('[system.system_x]\ncost_per_1k_input = "0.0000001"\ncost_per_1k_output = 1\n', "multiple of 0.000001"),
        ('[system.system_x]\ncost_per_1k_input = "-1"\ncost_per_1k_output = 1\n', "negative"),
        ('[system.system_x]\ncost_per_1k_input = "10.001"\ncost_per_1k_output = 1\n', "above the limit of 10 CNY"),
        ('[system.system_x]\ncost_per_1k_input = "abc"\ncost_per_1k_output = 1\n', "number"),
        ("[system.system_x]\ncost_per_1k_input = 1\n", "needs cost_per_1k_output"),
        ("[system.system_x]\ncost_per_1k_input = 1\ncost_per_1k_output = 1\ncolour = 1\n", "unknown keys"),
        ("oops = 1\n", "unknown top-level"),
        ("[system\n", "not valid TOML"),
    ],
)
def test_bad_price_files_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "prices.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        PriceTable.from_toml(path)


def test_missing_price_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PriceTable.from_toml(tmp_path / "nope.toml")


def test_price_passed_with_the_call_only_for_custom_models():
    table = PriceTable()
    priced = table.with_call_price("custom_x", {"cost_per_1k_input": "0.01", "cost_per_1k_output": "0.02"})
    assert priced.cost_nano(1000, 1000) == 30_000_000 and not priced.is_system
    with pytest.raises(InvalidInput, match="system model"):
        table.with_call_price("system_deepseek", {"cost_per_1k_input": "0", "cost_per_1k_output": "0"})
    with pytest.raises(InvalidInput):
        table.with_call_price("custom_x", {"cost_per_1k_input": "0.01"})


def test_settings_read_the_price_file_from_the_environment(tmp_path):
    from quota import Settings

    path = tmp_path / "p.toml"
    path.write_text('[custom.custom_a]\ncost_per_1k_input = "1"\ncost_per_1k_output = "2"\n', encoding="utf-8")
    settings = Settings.from_env({"QUOTA_PRICES_FILE": str(path), "QUOTA_MONTHLY_CREDIT": "7.5"})
    assert settings.prices.lookup("custom_a").input_nano_per_token == 1_000_000
    assert settings.credit_nano == 7_500_000_000
    with pytest.raises(ConfigError):
        Settings.from_env({"QUOTA_MONTHLY_CREDIT": "-1"})
    with pytest.raises(ConfigError):
        Settings.from_env({"QUOTA_PREFIX": "bad prefix"})
    with pytest.raises(ConfigError):
        Settings.from_env({"QUOTA_DEDUPE_TTL_S": "0"})


# A system id can't be dodged by spelling it differently (issue 9): any id that folds (NFKC, then
# case) to a system id, or to something starting with ``system_``, and is not exactly in the
# system table is UnknownModel in the library, the API and the demo; it is never a free custom model.
RESPELLINGS = [
    "System_deepseek",
    "SYSTEM_DEEPSEEK",
    "system_DeepSeek",
    "sYsTeM_deepseek",
    "ｓｙｓｔｅｍ_deepseek",  # fullwidth letters (NFKC folds them to ASCII)
    "system＿deepseek",  # fullwidth low line
    "ＳＹＳＴＥＭ_ＤＥＥＰＳＥＥＫ",
    "System_gpt5",
    "SYSTEM_x",
    "ſystem_deepseek",  # long s case-folds to s
    "System_deepseek\u200b"[:-1],
    "Ｓystem_deepseek",
]


@pytest.mark.parametrize("model_id", RESPELLINGS)
def test_respelled_system_ids_are_unknown_models(model_id):
    table = PriceTable()
    with pytest.raises(UnknownModel, match="unknown system model"):
        table.lookup(model_id)


def test_respelling_a_custom_id_that_folds_to_a_system_one_is_refused_in_the_table():
    for respelled in ("System_deepseek", "SYSTEM_A", "ｓｙｓｔｅｍ_b"):
        with pytest.raises(ConfigError, match="price table: (custom model id .* must not start|invalid model_id)"):
            PriceTable(custom={respelled: {"cost_per_1k_input": "0", "cost_per_1k_output": "0"}})


def test_exact_system_and_ordinary_custom_ids_still_work():
    table = PriceTable()
    assert table.lookup("system_deepseek").is_system
    for custom in ("deepseek-chat", "my_system_model", "gpt-4o", "Systems_x", "systemx"):
        assert not table.lookup(custom).is_system
