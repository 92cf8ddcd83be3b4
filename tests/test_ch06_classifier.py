"""Chapter 6: the spam data pipeline, the classification head, accuracy and loss on the last token,
fine-tuning, classify_review, and saving/reloading the classifier."""

import csv
import math
import zipfile

import pandas as pd
import pytest
import torch
import torch.nn as nn
from conftest import CharTokenizer
from torch.utils.data import DataLoader, TensorDataset

import w_finetune_classifier as w
from plumbing import ScriptError
from s_gpt_model import GPTModel
from checkpoints import save_checkpoint
from v_load_gpt2_weights import BASE_CONFIG, model_configs

TINY_CFG = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
            "drop_rate": 0.0, "qkv_bias": True}
CHAR_IDS = 60  # CharTokenizer(CHAR_IDS) gives ids below 60: 63 pads, and no character is 63


def labelled_df(num_rows):
    """Every fifth row spam, the rest ham, interleaved as in the raw file."""
    rows = [("spam", f"WIN a {i} prize now, call 0800") if i % 5 == 4 else ("ham", f"see you at {i}")
            for i in range(num_rows)]
    return pd.DataFrame(rows, columns=["Label", "Text"])


# ---- data ----

def test_read_sms_spam_uses_pandas_default_quoting(tmp_path):
    # Like the real file: a message that opens a quote swallows the lines up to the next quote.
    path = tmp_path / "SMSSpamCollection.tsv"
    path.write_text('ham\tfirst message\nham\t"opens a quote\nspam\tWIN now\nham\tcloses" it\n'
                    "spam\tlast message\n", encoding="utf-8")
    df = w.read_sms_spam(path)
    assert list(df.columns) == ["Label", "Text"]
    assert df["Label"].tolist() == ["ham", "ham", "spam"]
    assert df["Text"][1] == "opens a quote\nspam\tWIN now\nham\tcloses it"
    # Without quoting every line is a row: the book's 4825 ham comes from the default (4827 without).
    assert len(pd.read_csv(path, sep="\t", header=None, quoting=csv.QUOTE_NONE)) == 5


def test_create_balanced_dataset_counts_and_determinism():
    df = labelled_df(50)
    balanced = w.create_balanced_dataset(df)
    assert balanced["Label"].value_counts().to_dict() == {"ham": 10, "spam": 10}
    assert set(balanced.index[balanced["Label"] == "spam"]) == set(df.index[df["Label"] == "spam"])
    ham_index = balanced.index[balanced["Label"] == "ham"]
    assert ham_index.is_unique and set(ham_index) <= set(df.index[df["Label"] == "ham"])
    # A seeded random sample: the same every time, not simply the first ten ham rows.
    assert balanced.equals(w.create_balanced_dataset(df))
    assert list(ham_index) != list(df.index[df["Label"] == "ham"][:10])


def test_random_split_sizes_are_the_books():
    df = pd.DataFrame({"Label": [0, 1] * 747, "Text": [f"message {i}" for i in range(1494)]})
    train_df, validation_df, test_df = w.random_split(df, 0.7, 0.1)
    assert (len(train_df), len(validation_df), len(test_df)) == (1045, 149, 300)
    texts = [*train_df["Text"], *validation_df["Text"], *test_df["Text"]]
    assert sorted(texts) == sorted(df["Text"])  # disjoint, nothing lost
    assert train_df["Text"].tolist() != df["Text"][:1045].tolist()  # shuffled first
    again = w.random_split(df, 0.7, 0.1)
    assert all(a.equals(b) for a, b in zip((train_df, validation_df, test_df), again))


def write_csv(path, texts, labels):
    pd.DataFrame({"Label": labels, "Text": texts}).to_csv(path, index=None)
    return path


def test_spam_dataset_pads_to_the_longest_text(tmp_path, gpt2_tokenizer):
    texts = ["Hi", "Hello there, how are you?", "Call now"]
    csv_file = write_csv(tmp_path / "train.csv", texts, [0, 0, 1])
    dataset = w.SpamDataset(csv_file, gpt2_tokenizer)
    lengths = [len(gpt2_tokenizer.encode(t)) for t in texts]
    assert dataset.max_length == max(lengths) == 7
    assert len(dataset) == 3
    for i, text in enumerate(texts):
        ids, label = dataset[i]
        assert ids.dtype == torch.long and ids.shape == (7,)
        assert ids.tolist() == gpt2_tokenizer.encode(text) + [50256] * (7 - lengths[i])
        assert label.dtype == torch.long and label.item() == [0, 0, 1][i]


def test_spam_dataset_truncates_to_max_length(tmp_path, gpt2_tokenizer):
    texts = ["Hi", "Hello there, how are you?"]
    csv_file = write_csv(tmp_path / "val.csv", texts, [1, 0])
    dataset = w.SpamDataset(csv_file, gpt2_tokenizer, max_length=3, pad_token_id=0)
    assert dataset.max_length == 3
    assert dataset[0][0].tolist() == gpt2_tokenizer.encode("Hi") + [0, 0]
    assert dataset[1][0].tolist() == gpt2_tokenizer.encode("Hello there, how are you?")[:3]


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


@pytest.mark.parametrize("bad_name", ["../evil.txt", "sub/../../evil.txt", "ABSOLUTE"])
def test_extract_zip_safely_refuses_members_outside_the_folder(tmp_path, bad_name):
    if bad_name == "ABSOLUTE":
        bad_name = str(tmp_path / "elsewhere" / "evil.txt")
    zip_path = make_zip(tmp_path / "data.zip", {"SMSSpamCollection": "ham\thi\n", bad_name: "boom"})
    target = tmp_path / "extracted"
    with pytest.raises(ScriptError, match="evil.txt"):
        w.extract_zip_safely(zip_path, target)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "elsewhere").exists()
    assert not (target / "SMSSpamCollection").exists()  # refused whole, not half extracted


def test_extract_zip_safely_rejects_a_corrupt_zip(tmp_path):
    zip_path = tmp_path / "data.zip"
    zip_path.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(ScriptError, match="not a valid zip"):
        w.extract_zip_safely(zip_path, tmp_path / "extracted")


def test_download_and_unzip_spam_data(tmp_path, local_server, capsys):
    content = "ham\tsee you soon\nspam\tWIN cash\n"
    url = local_server.add("/sms.zip", make_zip(tmp_path / "served.zip", {
        "SMSSpamCollection": content, "readme": "the readme"}).read_bytes())
    extracted = tmp_path / "data" / "sms_spam_collection"
    data_file = extracted / "SMSSpamCollection.tsv"
    args = (url, tmp_path / "data" / "sms.zip", extracted, data_file)
    assert w.download_and_unzip_spam_data(*args) == data_file
    assert data_file.read_text(encoding="utf-8") == content
    assert not (extracted / "SMSSpamCollection").exists()  # renamed to .tsv, as in the book
    w.download_and_unzip_spam_data(*args)
    assert local_server.requests == ["/sms.zip"]
    assert "Skipping download" in capsys.readouterr().out


def test_an_extracted_data_file_is_renamed_without_a_download(tmp_path, local_server, capsys):
    extracted = tmp_path / "data" / "sms_spam_collection"
    extracted.mkdir(parents=True)
    (extracted / "SMSSpamCollection").write_text("ham\tsee you soon\n", encoding="utf-8")  # unzipped by hand
    data_file = extracted / "SMSSpamCollection.tsv"
    url = local_server.base_url + "/sms.zip"  # serves nothing: it must not be asked
    zip_path = tmp_path / "data" / "sms.zip"
    assert w.download_and_unzip_spam_data(url, zip_path, extracted, data_file) == data_file
    assert capsys.readouterr().out == f"File saved as {data_file}\n"  # not "downloaded"
    assert data_file.read_text(encoding="utf-8") == "ham\tsee you soon\n"
    assert local_server.requests == [] and not zip_path.exists()


def test_download_and_unzip_spam_data_without_the_data_file(tmp_path, local_server):
    url = local_server.add("/other.zip", make_zip(tmp_path / "served.zip", {"readme": "x"}).read_bytes())
    extracted = tmp_path / "sms_spam_collection"
    with pytest.raises(ScriptError, match="did not contain SMSSpamCollection"):
        w.download_and_unzip_spam_data(url, tmp_path / "sms.zip", extracted,
                                       extracted / "SMSSpamCollection.tsv")


# ---- the classifier ----

def test_build_classifier_freezes_all_but_the_last_block_final_norm_and_head():
    torch.manual_seed(0)
    model = w.build_classifier(GPTModel(TINY_CFG), num_classes=2)
    assert model.out_head.weight.shape == (2, 32) and model.out_head.bias is not None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("trf_blocks.1.", "final_norm.", "out_head."))
                             for name in trainable)
    assert {name for name, _ in model.named_parameters()
            if name.startswith(("trf_blocks.1.", "final_norm.", "out_head."))} == trainable
    # last block: W_q,k,v + out_proj 4*(32*32+32), feed forward 32*128+128 + 128*32+32, two norms 4*32;
    # final_norm 2*32; head 32*2+2
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 12704 + 64 + 66
    # The head is created right after torch.manual_seed(123), whatever the RNG state before.
    torch.manual_seed(1)
    other = w.build_classifier(GPTModel(TINY_CFG))
    assert torch.equal(model.out_head.weight, other.out_head.weight)
    assert model(torch.tensor([[1, 2, 3, 4]])).shape == (1, 4, 2)


def test_build_classifier_on_gpt2_124m_counts():
    cfg = {**BASE_CONFIG, **model_configs["gpt2-small (124M)"]}  # the book's chapter 6 model
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = GPTModel(cfg)
    w.build_classifier(model)
    assert sum(p.numel() for p in model.parameters()) == 124_441_346
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7_090_946


class LastTokenIsSeven(nn.Module):
    """Logits [0.5, 1.0] where the token is 7, [0.5, 0.0] elsewhere."""

    def forward(self, x):
        return torch.stack([torch.full(x.shape, 0.5), (x == 7).float()], dim=-1)


def test_calc_accuracy_loader_reads_the_last_token():
    inputs = torch.tensor([[1, 2, 7], [7, 2, 3], [7, 7, 7], [4, 5, 6],   # predictions 1, 0, 1, 0
                           [1, 1, 7], [1, 1, 1], [2, 2, 2], [3, 3, 7]])  # predictions 1, 0, 0, 1
    labels = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1])                      # 6 of 8 correct
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=4)
    model = LastTokenIsSeven()
    assert w.calc_accuracy_loader(loader, model, "cpu") == 6 / 8
    assert w.calc_accuracy_loader(loader, model, "cpu", num_batches=1) == 3 / 4
    assert w.calc_accuracy_loader(loader, model, "cpu", num_batches=10) == 6 / 8


def test_calc_loss_batch_and_loader_use_the_last_token():
    inputs = torch.tensor([[7, 1], [1, 7], [2, 2]])
    labels = torch.tensor([1, 1, 0])
    model = LastTokenIsSeven()
    low, high = -math.log(1 / (1 + math.exp(0.5))), -math.log(1 / (1 + math.exp(-0.5)))
    loss = w.calc_loss_batch(inputs, labels, model, "cpu")
    assert loss.item() == pytest.approx((high + low + high) / 3)  # logits [0.5, 0], [0.5, 1], [0.5, 0]
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=1)
    assert w.calc_loss_loader(loader, model, "cpu", num_batches=2) == pytest.approx((high + low) / 2)
    empty = DataLoader(TensorDataset(inputs[:0], labels[:0]), batch_size=1)
    assert math.isnan(w.calc_loss_loader(empty, model, "cpu"))


def easy_task(num_examples, generator):
    """Class 0 uses tokens 1-20, class 1 tokens 30-50, eight tokens per example."""
    labels = torch.arange(num_examples) % 2
    low = torch.randint(1, 21, (num_examples, 8), generator=generator)
    high = torch.randint(30, 51, (num_examples, 8), generator=generator)
    return torch.where(labels[:, None] == 1, high, low), labels


def test_train_classifier_simple_learns_an_easy_task(capsys):
    generator = torch.Generator().manual_seed(123)
    train_loader = DataLoader(TensorDataset(*easy_task(64, generator)), batch_size=8, shuffle=True,
                              drop_last=True, generator=generator)
    val_loader = DataLoader(TensorDataset(*easy_task(32, generator)), batch_size=8)
    torch.manual_seed(123)
    model = w.build_classifier(GPTModel(TINY_CFG))
    before = w.calc_accuracy_loader(val_loader, model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_losses, val_losses, train_accs, val_accs, examples_seen = w.train_classifier_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=4, eval_freq=10, eval_iter=2)
    after = w.calc_accuracy_loader(val_loader, model, "cpu")
    assert before <= 0.6 and after >= 0.9
    assert examples_seen == 4 * 64
    assert len(train_losses) == len(val_losses) == 4  # steps 0, 10, 20, 30 of 32
    assert len(train_accs) == len(val_accs) == 4  # one per epoch
    assert val_losses[-1] < val_losses[0]
    out = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss" in out and "Ep 4 (Step 000030)" in out
    assert out.count("Training accuracy:") == 4


class RecordingHead(nn.Module):
    """Logits with a fixed preferred class; remembers the shape of the last input."""

    def __init__(self, predicted_class, context_length=16):
        super().__init__()
        self.pos_emb = nn.Embedding(context_length, 4)  # classify_review reads the context length here
        self.predicted_class = predicted_class
        self.seen = None

    def forward(self, x):
        self.seen = x
        logits = torch.zeros(*x.shape, 2)
        logits[..., self.predicted_class] = 1.0
        return logits


def test_classify_review_labels_padding_and_truncation():
    tokenizer = CharTokenizer(CHAR_IDS)
    assert w.classify_review("hello", RecordingHead(1), tokenizer, "cpu") == "spam"
    model = RecordingHead(0)
    assert w.classify_review("hello", model, tokenizer, "cpu", max_length=8, pad_token_id=63) == "not spam"
    assert model.seen.tolist() == [tokenizer.encode("hello") + [63, 63, 63]]
    w.classify_review("hello", model, tokenizer, "cpu")  # no max_length: no padding
    assert model.seen.shape == (1, 5)
    w.classify_review("x" * 40, model, tokenizer, "cpu", max_length=100)  # the context is 16
    assert model.seen.shape == (1, 16)
    w.classify_review("x" * 40, model, tokenizer, "cpu")
    assert model.seen.shape == (1, 16)
    with pytest.raises(ValueError, match="at least one token"):
        w.classify_review("", model, tokenizer, "cpu")


def test_classify_review_with_a_tiny_gpt():
    torch.manual_seed(123)
    model = w.build_classifier(GPTModel(TINY_CFG))
    with torch.no_grad():
        model.out_head.weight.zero_()
        model.out_head.bias.copy_(torch.tensor([0.0, 1.0]))
    assert w.classify_review("win cash", model, CharTokenizer(CHAR_IDS), "cpu", max_length=12,
                             pad_token_id=63) == "spam"
    with torch.no_grad():
        model.out_head.bias.copy_(torch.tensor([1.0, 0.0]))
    assert w.classify_review("win cash", model, CharTokenizer(CHAR_IDS), "cpu", max_length=12,
                             pad_token_id=63) == "not spam"


def test_save_and_load_classifier(tmp_path):
    torch.manual_seed(123)
    model = w.build_classifier(GPTModel(TINY_CFG))
    path = tmp_path / "review_classifier.pth"
    save_checkpoint(path, model, TINY_CFG, num_classes=2, max_length=12)
    reloaded, cfg = w.load_classifier(path)
    assert cfg == TINY_CFG
    idx = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        assert torch.equal(reloaded(idx), model(idx))
    plain = tmp_path / "plain.pth"
    save_checkpoint(plain, GPTModel(TINY_CFG), TINY_CFG)
    with pytest.raises(ScriptError, match="not a classifier checkpoint"):
        w.load_classifier(plain)
    # A classifier whose head does not fit its config: one line that names the differing shape.
    three_classes = tmp_path / "three.pth"
    save_checkpoint(three_classes, model, TINY_CFG, num_classes=3)
    with pytest.raises(ScriptError, match=r"three\.pth do not fit a GPTModel built from its config: "
                                          r".*out_head"):
        w.load_classifier(three_classes)


def test_plot_values_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = w.plot_values(torch.linspace(0, 2, 3), torch.linspace(0, 48, 3), [0.5, 0.7, 0.9],
                         [0.4, 0.6, 0.8], label="accuracy", path=tmp_path / "accuracy-plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
