"""The tokenizer trained on a mixture: T5's layout, reloadable with AutoTokenizer, identical ids."""

import re
from pathlib import Path

import sentencepiece as spm
from transformers import AutoTokenizer

from t2t.registry import Registry
from t2t.tokenizer import mixture_texts, train_tokenizer


def test_train_save_reload_identical_ids(tmp_path):
    registry = Registry.default()
    texts = list(mixture_texts(registry, ["owner_lookup", "sort_words", "larger_number"], "train", 100))
    out = train_tokenizer(iter(texts), 300, tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    sp = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    assert [tokenizer(t, add_special_tokens=False).input_ids for t in texts] == [sp.encode(t) for t in texts]
    # T5's layout: pad 0, eos 1, unk 2; 100 sentinels after the pieces, <extra_id_0> the last id
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert len(tokenizer) == sp.get_piece_size() + 100
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == sp.get_piece_size()
    assert tokenizer("the owl").input_ids[-1] == 1  # T5 appends EOS


def test_mixture_texts_include_choices_and_every_template():
    texts = list(mixture_texts(Registry.default(), ["sentiment"], "train", rows_per_task=5))
    # 5 rows x 3 templates x (input, target, 2 choices)
    assert len(texts) == 5 * 3 * 4
    assert {"negative", "positive", "bad", "good"} <= set(texts)


def test_tokenizer_command_writes_a_loadable_dir(tmp_path, run_cli):
    code, out, _ = run_cli("tokenizer", "train", "demo", "--vocab-size", "300", "--out", tmp_path / "tok",
                           "--rows-per-task", "50")  # fmt: skip
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'tok'}: 400 tokens (300 pieces + 100 sentinels)"
    assert AutoTokenizer.from_pretrained(str(tmp_path / "tok")).eos_token_id == 1
    # more pieces asked for than the text holds: what it got, saying so
    code, out, _ = run_cli("tokenizer", "train", "demo", "--vocab-size", "100000", "--out", tmp_path / "big",
                           "--rows-per-task", "50")  # fmt: skip
    got = len(AutoTokenizer.from_pretrained(str(tmp_path / "big")))
    assert code == 0 and got < 100_100 and out.strip() == (
        f"wrote {tmp_path / 'big'}: {got} tokens ({got - 100} pieces + 100 sentinels; the text holds fewer than "
        "the 100,000 asked for)")  # fmt: skip
    assert run_cli("tokenizer", "train", "demo", "--vocab-size", "2", "--out", tmp_path / "bad")[0] == 2
    assert not (tmp_path / "bad").exists()


def test_a_vocab_smaller_than_the_texts_characters_says_the_size_that_fits(tmp_path, run_cli):
    # SentencePiece's own line ("... required_chars. 10 vs 58. ... decrease character_coverage with
    # --character_coverage option") named an option t2t does not have; the size it says must be the one that fits
    args = ["tokenizer", "train", "demo", "--rows-per-task", "5"]
    code, out, err = run_cli(*args, "--vocab-size", "10", "--out", tmp_path / "small")
    assert code == 2 and out == "" and not (tmp_path / "small").exists()
    found = re.fullmatch(r"t2t: error: a vocabulary of 10 pieces is too small for this text: its distinct characters "
                         r"and the special pieces take (\d+); give a vocab size of at least \1\n", err)  # fmt: skip
    assert found, err
    needed = int(found.group(1))
    assert 30 < needed < 100  # the demo's text: lowercase and uppercase letters, digits, punctuation
    code, _, err = run_cli(*args, "--vocab-size", str(needed - 1), "--out", tmp_path / "small")
    assert code == 2 and f"take {needed}; give a vocab size of at least {needed}" in err
    code, _, err = run_cli(*args, "--vocab-size", str(needed), "--out", tmp_path / "fits")
    assert code == 0, err


def test_a_bad_row_met_while_the_tokenizer_trains_is_its_own_line(tmp_path, run_cli):
    # the row's error crossed SentencePiece's C++ side and came back as "SentencePiece training failed: INTERNAL:
    # T2TError: ...": now the line is the row's, and the render limit says how a task raises it
    from tests.conftest import qa_task, write_jsonl, write_task

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "rows.jsonl", [{"question": "fine", "answer": "yes"}, {"question": "long " * 30_000,
                                                                                  "answer": "no"}])  # fmt: skip
    write_task(tasks, qa_task(source={"kind": "files", "splits": {"train": "rows.jsonl"}}))
    (tmp_path / "mixtures").mkdir()
    (tmp_path / "mixtures" / "mine.yaml").write_text("name: mine\ndescription: x\nmembers: {toy_qa: 1}\nsplits: {train: train, "
                                        "eval: train}\nseed: 0\n")  # fmt: skip
    code, out, err = run_cli("--templates-dir", tasks, "--mixtures-dir", tmp_path / "mixtures", "tokenizer", "train", "mine",
                             "--vocab-size", "50", "--out", tmp_path / "tok")  # fmt: skip
    assert code == 2 and out == "" and not (tmp_path / "tok").exists()
    assert err.strip().splitlines() == [
        f"t2t: error: {tasks / 'toy_qa.yaml'}, task 'toy_qa', template 'plain', split 'train', row 1: input: the "
        "output passed 100,000 characters (limit max_output_chars); a task whose rows need more raises it in its "
        "file: limits: {max_output_chars: N}"
    ]


def test_the_tokenizer_trains_on_a_seeded_sample_of_a_large_mixture(tmp_path, monkeypatch):
    """SentencePiece loaded every rendered text (millions for a mixture of many tasks; its memory grows with
    them); it now keeps a uniform sample of SENTENCE_SAMPLE, the same in every run."""
    import t2t.tokenizer as tokenizer_module

    # 3,000 texts, each with a character of its own: the characters a tokenizer knows show what it trained on
    texts = [f"word{i % 7} and {chr(0x4E00 + i)}" for i in range(3000)]

    def characters(out: Path) -> set[str]:
        model = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
        pieces = (model.id_to_piece(i) for i in range(model.get_piece_size()))
        return {c for p in pieces for c in p if "\u4e00" <= c <= "\u9fff"}

    whole = characters(tokenizer_module.train_tokenizer(iter(texts), 8000, tmp_path / "whole"))
    monkeypatch.setattr(tokenizer_module, "SENTENCE_SAMPLE", 500)
    sampled = characters(tokenizer_module.train_tokenizer(iter(texts), 8000, tmp_path / "a"))
    again = characters(tokenizer_module.train_tokenizer(iter(texts), 8000, tmp_path / "b"))
    assert len(whole) == 3000
    assert 400 <= len(sampled) <= 600 and sampled < whole
    assert again == sampled
