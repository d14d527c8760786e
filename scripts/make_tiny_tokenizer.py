"""Build the sentencepiece tokenizer of the `tiny-random` preset (src/pusa/assets/tiny_tokenizer).

Run once; the result is committed. Deterministic: a seeded corpus of everyday caption words.
"""

import random
from pathlib import Path

import sentencepiece as spm

WORDS = """a an the red green blue yellow orange purple white black gray pink cyan circle square triangle star
ring slides moves drifts bounces grows shrinks left right up down over on across dark light bright background
diagonally toward upper lower corner video of cat dog person walking running flying car street city ocean waves
sunset forest tree mountain river snow rain sky cloud bird fish flower house road night day slowly quickly camera
pans zooms in out small large shape object and with is from to at scene shot close wide cinematic Bright tones
overexposed static blurred details subtitles style works paintings images overall worst quality low JPEG
compression residue ugly incomplete extra fingers poorly drawn hands faces deformed disfigured misshapen limbs
fused still picture messy three legs many people walking backwards , .""".split()


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "src/pusa/assets/tiny_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "spiece"),
        vocab_size=160,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (out / "spiece.vocab").unlink()


if __name__ == "__main__":
    main()
