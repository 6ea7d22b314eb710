import tomllib

from qualflow.settings import Settings, load_settings, render_toml


def test_every_setting_is_described():
    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_precedence_env_over_toml_over_default(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "qualflow.toml").write_text('segmentation = "turn"\nretrieval_k = 7\n')
    s = load_settings(ws)
    assert (s.segmentation, s.retrieval_k, s.coder) == ("turn", 7, "llm")
    monkeypatch.setenv("QUALFLOW_RETRIEVAL_K", "3")
    assert load_settings(ws).retrieval_k == 3
    assert load_settings(ws, retrieval_k=5).retrieval_k == 5


def test_rendered_toml_parses_and_round_trips(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    text = render_toml()
    data = tomllib.loads(text)
    assert data["segmentation"] == "sentence"
    assert "llm_api_key" not in data  # secrets never go into the file
    (ws / "qualflow.toml").write_text(text)
    assert load_settings(ws).model_dump(exclude={"workspace"}) == Settings().model_dump(
        exclude={"workspace"}
    )


def test_api_key_from_environment_is_not_in_repr(monkeypatch, tmp_path):
    monkeypatch.setenv("QUALFLOW_LLM_API_KEY", "sk-secret-123")
    s = load_settings(tmp_path)
    assert s.api_key() == "sk-secret-123"
    assert "sk-secret-123" not in repr(s) and "sk-secret-123" not in str(s.model_dump())


def test_default_store_is_sqlite_in_workspace_data(tmp_path):
    s = load_settings(tmp_path / "study")
    assert s.db_url == f"sqlite:///{(tmp_path / 'study' / 'data' / 'qualflow.sqlite3')}"
