"""Evaluation sessions: generate answers for a test set, or import someone's results.

``results.jsonl`` gets one line per item as soon as its batch is done (so an interrupted
evaluation continues from the first missing item), and ``results.csv`` is written at
the end. Generation is batched and greedy, with left padding and the tokenizer's chat
template; ``progress`` events carry items done, items/s, tokens/s and an ETA.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.data import assign_ids, load, prompt_text
from engine.errors import UserError
from engine.prescreen import flags
from engine.session import SessionWriter, read_session_json, run_lock
from engine.session.layout import EVENT, FINISHED, IMPORTED, PLAN, PROGRESS, RESULTS, RESULTS_CSV, RESUMED, WARNING
from engine.session.records import append_results as _append_results
from engine.session.records import read_results, repair_results, write_csv


@dataclass
class EvalSpec:
    model: str
    data: str
    adapter: str | None = None
    max_examples: int | None = None
    batch_size: int = 8
    max_new_tokens: int = 128
    device: str = "auto"
    held_out: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    samples: int = 1  # > 1: that many sampled answers per question, items QID~1..QID~N
    temperature: float = 0.8  # only when samples > 1 or check_samples > 0 (otherwise greedy)
    seed: int = 0
    check_samples: int = 0  # > 0: beside the greedy answer, that many sampled ones (``samples``), for self-consistency

    @classmethod
    def from_json(cls, data: dict) -> EvalSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


SAMPLE_SEP = "~"


def sample_ids(row_id: str, samples: int) -> list[str]:
    """The item ids of one question's answers: the question's id, or ``ID~1`` .. ``ID~N`` when sampled."""
    return [row_id] if samples <= 1 else [f"{row_id}{SAMPLE_SEP}{j}" for j in range(1, samples + 1)]


def item_rows(spec: EvalSpec) -> list[dict]:
    columns = dict(spec.columns)
    if spec.samples > 1 and "reference" not in columns:
        columns.update(_reference_column(spec.data))
    rows = assign_ids(load(spec.data, "test", columns))
    return rows[: spec.max_examples] if spec.max_examples else rows


def _reference_column(path: str) -> dict[str, str]:
    """An SFT file (question, answer) serves as a sampling set: its answer is the reference."""
    from engine.data import DataReport, detect_format, read_records

    p = Path(path)
    if not p.exists():
        return {}
    report = DataReport(file=str(p), kind="test")
    for _, rec in read_records(p, detect_format(p), report):
        keys = rec.get("__header__", rec) if isinstance(rec, dict) else {}
        if "reference" not in keys and "answer" in keys:
            return {"reference": "answer"}
        if isinstance(rec, dict) and "__header__" not in rec:
            break
    return {}


def _extra(row: dict) -> dict:
    return dict(row.get("extra") or {})


def start(spec: EvalSpec, root: Path, *, name: str | None = None, shared: bool = False,
          command: list[str] | None = None) -> SessionWriter:
    from engine.recipe import check_adapter_folder, check_model_folder

    check_model_folder(spec.model)
    if spec.adapter:
        check_adapter_folder(spec.adapter)
    if spec.samples < 1:
        raise UserError("--samples must be at least 1", field="--samples")
    if spec.check_samples < 0:
        raise UserError("--check-samples must be 0 or more", field="--check-samples")
    if spec.samples > 1 and spec.check_samples:
        raise UserError("--samples and --check-samples do not go together", field="--check-samples",
                        hint="--samples makes every sample an item; --check-samples keeps them beside one greedy "
                             "answer for the consistency judge")
    if (spec.samples > 1 or spec.check_samples) and not spec.temperature > 0:
        raise UserError("sampling needs a temperature above 0", field="--temperature", hint="e.g. --temperature 0.8")
    rows = item_rows(spec)
    writer = SessionWriter.create(root, "eval", name=name, stage="eval", command=command, config=asdict(spec),
                                  shared=shared)
    writer.update(items=len(rows) * spec.samples, questions=len(rows), held_out=spec.held_out)
    return writer


def run(session: Path, echo=print) -> int:
    """Generate the missing answers of an eval session; returns an exit code. One process at a time
    (``run_lock``): a second `rounds eval --resume` of the same session is refused."""
    with run_lock(session):
        return _run(session, echo)


def _run(session: Path, echo) -> int:
    writer = SessionWriter.reopen(session)
    spec = EvalSpec.from_json(writer.meta["config"])
    stop = {"reason": None}

    def on_signal(signum, frame):
        stop["reason"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        rows = item_rows(spec)
        cut = repair_results(session)
        if cut:
            writer.event(EVENT, kind=WARNING, message=f"dropped a half-written last line of {RESULTS} "
                                                          f"({cut} bytes); that item is generated again")
        done = {r["id"] for r in read_results(session)}
        todo = [r for r in rows if not all(i in done for i in sample_ids(r["id"], spec.samples))]
        writer.set_status("running")
        if done:
            writer.event(EVENT, kind=RESUMED, done=len(done), remaining=len(todo))
        if todo:
            _generate(spec, writer, todo, len(rows), len(rows) - len(todo), stop, echo, done, rows)
        write_csv(session)
        if stop["reason"]:
            writer.set_status("stopped", reason=stop["reason"])
            echo(f"rounds: stopped ({stop['reason']}); continue with `rounds eval --resume {session.name}`")
            return 0
        writer.event(EVENT, kind=FINISHED, items=len(rows) * spec.samples)
        writer.set_status("finished")
        echo(f"rounds: {len(rows) * spec.samples} answers in {session / RESULTS} and {session / RESULTS_CSV}")
        return 0
    except UserError as e:
        writer.fail(e.message, detail=str(e))
        raise  # the command line says it, with its hint
    except Exception as e:
        import traceback

        traceback.print_exc()
        writer.fail(f"{type(e).__name__}: {e}".splitlines()[0][:500])
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        writer.close()


def load_for_generation(model_path: str, adapter: str | None, device: str):
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, local_files_only=True,
                                                     use_safetensors=True)
    except Exception as e:
        raise UserError(f"cannot load the model from {model_path}: {e}", field="--model") from None
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: faster generation
    model.to(device).eval()
    return tok, model, device


def generate_batch(tok, model, device: str, prompts: list[str], max_new_tokens: int) -> list[tuple[str, int, bool]]:
    """(answer, new tokens, truncated) for each prompt, greedy, one padded batch."""
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return _decode(tok, out[:, enc["input_ids"].shape[1]:], max_new_tokens)


def sample_batch(tok, model, device: str, prompts: list[str], max_new_tokens: int, samples: int,
                 temperature: float, seed: int) -> list[list[tuple[str, int, bool]]]:
    """``samples`` sampled answers for each prompt (one padded batch of prompts x samples)."""
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    torch.manual_seed(seed)  # the same batch gives the same samples on a resumed run
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             top_p=1.0, top_k=0, num_return_sequences=samples, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    decoded = _decode(tok, out[:, enc["input_ids"].shape[1]:], max_new_tokens)
    return [decoded[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def _decode(tok, new, max_new_tokens: int) -> list[tuple[str, int, bool]]:
    results = []
    for seq in new:
        ids = seq.tolist()
        if tok.eos_token_id in ids:
            n = ids.index(tok.eos_token_id)
            truncated = False
        else:
            n = len([i for i in ids if i != tok.pad_token_id])
            truncated = n >= max_new_tokens
        results.append((tok.decode(ids[:n], skip_special_tokens=True).strip(), n, truncated))
    return results


def _seed_for(seed: int, ids: list[str]) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{ids[0]}".encode()).digest()[:4], "big")


def _generate(spec: EvalSpec, writer: SessionWriter, todo: list[dict], total: int, done: int, stop: dict,
              echo, done_ids: set[str] | None = None, all_rows: list[dict] | None = None) -> None:
    tok, model, device = load_for_generation(spec.model, spec.adapter, spec.device)
    sampled = spec.samples > 1
    writer.event(EVENT, kind=PLAN, device=device, batch_size=spec.batch_size,
                 max_new_tokens=spec.max_new_tokens,
                 decoding=f"sampled x{spec.samples}, temperature {spec.temperature:g}" if sampled else "greedy")
    # longest prompts first: batches of similar length waste little on padding
    whole = (sampled or spec.check_samples) and all_rows
    by_length = sorted(all_rows if whole else todo, key=lambda r: len(prompt_text(r)), reverse=True)
    batches = [by_length[i:i + spec.batch_size] for i in range(0, len(by_length), spec.batch_size)]
    if whole:  # the batches of the whole set, so that a resumed run samples exactly what an unbroken one would
        wanted = {r["id"] for r in todo}
        batches = [b for b in batches if any(r["id"] in wanted for r in b)]
    t0 = time.monotonic()
    tokens = 0
    processed = 0
    for batch in batches:
        if stop["reason"]:
            break
        prompts = [prompt_text(r) for r in batch]
        if sampled:
            answers = sample_batch(tok, model, device, prompts, spec.max_new_tokens, spec.samples, spec.temperature,
                                   _seed_for(spec.seed, [r["id"] for r in batch]))
            generation = {"decoding": "sampled", "temperature": spec.temperature, "samples": spec.samples,
                          "seed": spec.seed, "max_new_tokens": spec.max_new_tokens, "batch_size": spec.batch_size}
        else:
            answers = [[a] for a in generate_batch(tok, model, device, prompts, spec.max_new_tokens)]
            generation = {"decoding": "greedy", "max_new_tokens": spec.max_new_tokens, "batch_size": spec.batch_size}
            if spec.check_samples:
                checks = sample_batch(tok, model, device, prompts, spec.max_new_tokens, spec.check_samples,
                                      spec.temperature, _seed_for(spec.seed, [r["id"] for r in batch]))
                generation |= {"check_samples": spec.check_samples, "temperature": spec.temperature,
                               "seed": spec.seed}
        records = []
        for k, (row, outs) in enumerate(zip(batch, answers, strict=True)):
            for j, (item_id, (answer, n, truncated)) in enumerate(zip(sample_ids(row["id"], spec.samples), outs,
                                                                       strict=True), start=1):
                tokens += n
                if done_ids and item_id in done_ids:
                    continue  # written before a crash cut this question's samples short
                extra = _extra(row) | ({"question_id": row["id"], "sample": j} if sampled else {})
                records.append({
                    "id": item_id, "question": row["question"], "context": row.get("context"),
                    "reference": row["reference"], "answer": answer, "model": spec.model, "adapter": spec.adapter,
                    "generation": generation, "new_tokens": n, "truncated": truncated,
                    "flags": flags(answer, row["reference"], row.get("context") or "", row["question"], truncated),
                    **({"extra": extra} if extra else {}),
                    **({"samples": [c[0] for c in checks[k]]} if spec.check_samples else {}),
                })
        _append_results(writer.path, records)
        new_rows = len({r["extra"]["question_id"] if sampled else r["id"] for r in records})
        done += new_rows
        processed += new_rows
        elapsed = time.monotonic() - t0
        ips = processed / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / ips if ips else None
        writer.event(PROGRESS, step=done, max_steps=total, unit="questions" if sampled else "items",
                     items_per_second=round(ips, 3),
                     tokens_per_second=round(tokens / elapsed, 1) if elapsed else None,
                     eta_seconds=round(eta, 1) if eta is not None else None)
        what = "questions" if sampled else "items"
        echo(f"{what} {done}/{total}  {ips:.2f} {what}/s  {tokens / max(elapsed, 1e-9):.0f} tokens/s  "
             f"ETA {eta:.0f} s" if eta is not None else f"{what} {done}/{total}")


# --------------------------------------------------------------------------- import

def import_results(file: str, columns: dict[str, str], root: Path, *, name: str | None = None,
                   shared: bool = False, command: list[str] | None = None, model: str | None = None,
                   held_out: bool = False) -> SessionWriter:
    """An eval session made from an existing results file (CSV/JSONL with question, reference, answer)."""
    from engine.data import validate_file

    report = validate_file(file, "test", columns)
    answer_col = columns.get("answer", "answer")
    if report.rows and not any("answer" in row for row in report.rows):  # a missing column: said once
        report.add(f"no {answer_col!r} column or field: there are no answers to import", line=1, field=answer_col,
                   hint="map the model's answers: --answer COLUMN")
    else:
        for row in report.rows:
            if "answer" not in row:
                report.add(f"missing field {answer_col!r}", line=row["line"], field=answer_col,
                           hint="map the model's answers: --answer COLUMN")
    problems = report.errors
    if problems or report.problems_dropped:
        shown = "\n".join(str(p) for p in problems[:10])
        more = len(problems) - 10
        raise UserError(f"{len(problems)} problem(s) in {file}:\n{shown}" + (f"\n... and {more} more" if more > 0
                                                                             else ""),
                        hint=f"fix the file, or check the column flags (`rounds validate {file} --kind test`)")
    assign_ids(report.rows)
    writer = SessionWriter.create(root, "eval", name=name, stage="eval", command=command, shared=shared,
                                  config={"imported_from": str(file), "columns": columns, "model": model,
                                          "held_out": held_out})
    records = []
    for row in report.rows:
        rid = row["id"]
        answer = row.get("answer") or ""
        records.append({"id": rid, "question": row["question"], "context": row.get("context"),
                        "reference": row["reference"], "answer": answer, "model": model or "(imported)",
                        "adapter": None, "generation": {"imported_from": str(file)}, "new_tokens": None,
                        "truncated": False,
                        "flags": flags(answer, row["reference"], row.get("context") or "", row["question"]),
                        **({"extra": _extra(row)} if _extra(row) else {})})
    _append_results(writer.path, records)
    write_csv(writer.path)
    writer.update(items=len(records), held_out=held_out)
    writer.event(EVENT, kind=IMPORTED, file=str(file), items=len(records))
    writer.set_status("finished")
    writer.close()
    return writer


def eval_session(path: Path) -> dict:
    """session.json of an eval session, or a clear error."""
    meta = read_session_json(path)
    if meta.get("kind") != "eval":
        raise UserError(f"{path.name} is a {meta.get('kind')} session, not an evaluation",
                        hint="give an eval session (made by `rounds eval` or `rounds import-results`)")
    return meta


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(Path(sys.argv[1])))
