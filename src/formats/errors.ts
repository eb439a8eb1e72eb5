// The one error class model file readers throw for a malformed, truncated or unsupported file.
import { DenollmError } from "../errors.ts";

/** A model file is missing, malformed or uses something we do not support; `file` names it. */
export class ModelFormatError extends DenollmError {
  /** Path of the offending file (or directory, when a whole layout is missing). */
  readonly file: string;

  constructor(file: string, detail: string, options?: ErrorOptions) {
    super("model_format", `${file}: ${detail}`, options);
    this.name = "ModelFormatError";
    this.file = file;
  }
}
