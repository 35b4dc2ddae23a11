package dev.fluxrec.sdk;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * Strict JSON (FORMAT.md section 5): UTF-8 without a byte order mark, RFC 8259 only, no
 * repeated key, depth at most {@link #MAX_DEPTH}, number tokens of at most {@link
 * #MAX_NUMBER_CHARS} characters, integers in the signed 64-bit range. Objects become {@code
 * LinkedHashMap<String, Object>}, arrays {@code List<Object>}, integers {@code Long}, other
 * numbers {@code Double}, {@code true}/{@code false} {@code Boolean}, {@code null} null.
 */
final class StrictJson {
  static final int MAX_DEPTH = 16;
  static final int MAX_NUMBER_CHARS = 64;
  private static final JsonFactory FACTORY =
      JsonFactory.builder()
          .streamReadConstraints(
              StreamReadConstraints.builder().maxNestingDepth(MAX_DEPTH + 8).maxNumberLength(1000).build())
          .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
          .build();

  private StrictJson() {}

  static Object parse(byte[] data, Function<String, DeltaException> error, String what)
      throws DeltaException {
    String text;
    try {
      text =
          StandardCharsets.UTF_8
              .newDecoder()
              .onMalformedInput(CodingErrorAction.REPORT)
              .onUnmappableCharacter(CodingErrorAction.REPORT)
              .decode(ByteBuffer.wrap(data))
              .toString();
    } catch (CharacterCodingException e) {
      throw error.apply(what + " is not UTF-8");
    }
    if (text.startsWith("\uFEFF")) {
      throw error.apply(what + " starts with a byte order mark");
    }
    try (JsonParser p = FACTORY.createParser(text)) {
      JsonToken t = p.nextToken();
      if (t == null) {
        throw error.apply(what + " is empty");
      }
      Object v = value(p, t, 1, error, what);
      if (p.nextToken() != null) {
        throw error.apply(what + " has data after its value");
      }
      return v;
    } catch (IOException e) { // JsonProcessingException and the constraints' exceptions
      throw error.apply(what + " is not strict JSON: " + e.getMessage());
    } catch (RuntimeException e) {
      throw error.apply(what + " is not strict JSON: " + e);
    }
  }

  private static Object value(
      JsonParser p, JsonToken t, int depth, Function<String, DeltaException> error, String what)
      throws IOException, DeltaException {
    switch (t) {
      case START_OBJECT -> {
        if (depth > MAX_DEPTH) {
          throw error.apply(what + " nests deeper than " + MAX_DEPTH);
        }
        Map<String, Object> m = new LinkedHashMap<>();
        for (JsonToken k = p.nextToken(); k != JsonToken.END_OBJECT; k = p.nextToken()) {
          String name = p.currentName();
          if (m.containsKey(name)) {
            throw error.apply(what + ": key '" + name + "' repeated");
          }
          m.put(name, value(p, p.nextToken(), depth + 1, error, what));
        }
        return m;
      }
      case START_ARRAY -> {
        if (depth > MAX_DEPTH) {
          throw error.apply(what + " nests deeper than " + MAX_DEPTH);
        }
        List<Object> a = new ArrayList<>();
        for (JsonToken k = p.nextToken(); k != JsonToken.END_ARRAY; k = p.nextToken()) {
          a.add(value(p, k, depth + 1, error, what));
        }
        return a;
      }
      case VALUE_STRING -> {
        return p.getText();
      }
      case VALUE_NUMBER_INT -> {
        String s = p.getText();
        if (s.length() > MAX_NUMBER_CHARS) {
          throw error.apply(what + ": number of " + s.length() + " characters");
        }
        try {
          return Long.parseLong(s);
        } catch (NumberFormatException e) {
          throw error.apply(what + ": integer " + s + " outside the signed 64-bit range");
        }
      }
      case VALUE_NUMBER_FLOAT -> {
        String s = p.getText();
        if (s.length() > MAX_NUMBER_CHARS) {
          throw error.apply(what + ": number of " + s.length() + " characters");
        }
        return Double.parseDouble(s);
      }
      case VALUE_TRUE -> {
        return Boolean.TRUE;
      }
      case VALUE_FALSE -> {
        return Boolean.FALSE;
      }
      case VALUE_NULL -> {
        return null;
      }
      default -> throw error.apply(what + ": unexpected token " + t);
    }
  }
}
